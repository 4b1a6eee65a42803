"""A checkpoint is data, never code: a pickle payload planted in every path that reads a
checkpoint is refused there, and never runs."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest
import torch

from samft.commands.resume import resume_checkpoint
from samft.io.atomic import previous_of
from samft.model.registry import build_sam
from samft.weights import CheckpointError, load_sam, read_state_dict, save_sam
from samft.weights.files import SAMFT_CHECKPOINT_TYPES, UnsafeCheckpointError, safe_torch_load
from samft.weights.lightning import checkpoint_kind, read_lightning_info

sys.path.insert(0, str(Path(__file__).parents[1] / "commands"))
from demo_cli import demo_overrides, run_samft  # noqa: E402


class _Payload:
    """Unpickling this runs `touch MARKER` (what an attacker's checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _plant(path: Path, marker: Path, lightning: bool = True) -> Path:
    """A checkpoint at `path` that looks like samft's own and carries the payload."""
    container = {"state_dict": {"w": torch.zeros(2)}, "payload": _Payload(marker)}
    if lightning:
        container |= {"pytorch-lightning_version": "2.6.0", "global_step": 3}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(container, path)
    return path


@pytest.fixture(autouse=True)
def _torch_told_to_trust_checkpoints(monkeypatch):
    """The variable that makes torch unpickle in full wherever weights_only is not passed:
    samft (and Lightning's load inside samft) must pass it, so this changes nothing."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def test_the_payload_runs_when_unpickled_in_full(tmp_path):
    """The planted file is a real attack: a full unpickle runs it (so the tests below can fail)."""
    marker = tmp_path / "ran"
    torch.load(_plant(tmp_path / "x.ckpt", marker), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("reader", ["load_sam", "read_state_dict", "safe_torch_load"])
def test_weights_readers_refuse_a_payload(tmp_path, reader):
    marker = tmp_path / "ran"
    path = _plant(tmp_path / "model.pth", marker, lightning=False)
    call = {"load_sam": load_sam, "read_state_dict": read_state_dict}.get(reader)
    if call is None:
        with pytest.raises(Exception, match="system|Unsupported global"):
            safe_torch_load(path)
    else:
        with pytest.raises(UnsafeCheckpointError, match=r"refusing to load .*(os|posix)\.system"):
            call(path)
    assert not marker.exists()


def test_lightning_metadata_reader_does_not_run_a_payload(tmp_path):
    """What export, eval's report and `checkpoint_kind` read first."""
    marker = tmp_path / "ran"
    path = _plant(tmp_path / "run.ckpt", marker)
    assert read_lightning_info(path) is None
    assert checkpoint_kind(path) == "weights"  # and read_state_dict then refuses it
    assert not marker.exists()


def test_resume_refuses_a_payload_and_its_previous_copy(tmp_path):
    marker = tmp_path / "ran"
    path = _plant(tmp_path / "checkpoints" / "last.ckpt", marker)
    refused = r"ckpt_path=.*last\.ckpt: refusing .*(os|posix)\.system"
    with pytest.raises(CheckpointError, match=refused):
        resume_checkpoint(str(path), "frozen")
    # a damaged last.ckpt falls back to last.ckpt.prev: which is read just as safely
    path.write_bytes(b"PK\x03\x04 cut short")
    _plant(previous_of(path), marker)
    with pytest.raises(CheckpointError, match=r"last\.ckpt\.prev: refusing .*(os|posix)\.system"):
        resume_checkpoint(str(path), "frozen")
    assert not marker.exists()


def test_resume_from_a_damaged_file_falls_back_to_its_safe_previous_copy(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    path.write_bytes(b"PK\x03\x04 cut short")
    torch.save({"pytorch-lightning_version": "2.6.0", "global_step": 1}, previous_of(path))
    assert resume_checkpoint(str(path), "frozen") == str(previous_of(path))


def test_samft_needs_no_unsafe_type_for_its_own_weights(tmp_path):
    """Nothing beyond the (explicit) allow-list is needed to read what samft writes."""
    path = save_sam(build_sam("tiny"), tmp_path / "tiny.pth")
    allowed = {f"{t.__module__}.{t.__qualname__}" for t in SAMFT_CHECKPOINT_TYPES}
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) <= allowed
    assert set(safe_torch_load(path)) == set(build_sam("tiny").state_dict())


def test_train_ckpt_path_last_never_runs_a_payload_lightning_finds(tmp_path):
    """`ckpt_path=last`: Lightning resolves and loads the file itself (weights_only=True)."""
    marker = tmp_path / "ran"
    out = tmp_path / "run"
    _plant(out / "checkpoints" / "last.ckpt", marker)
    result = run_samft(
        demo_overrides(tmp_path / "data", out, "ckpt_path=last", "validate_before_training=false"),
        tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "refusing to load" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()

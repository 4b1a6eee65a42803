"""Checkpoint files written atomically, beside their target, with the previous one kept.

`AtomicCheckpointIO` is the Trainer's checkpoint writer (`trainer.plugins` in
conf/trainer/default.yaml). Lightning's `TorchCheckpointIO` serialises into memory and
writes the target through fsspec; a failed write leaves its temporary file behind and the
error surfaces deep in a callback. Here a save writes `.<name>.tmp` in the target folder,
fsyncs it and renames it over the target, so the target is always a whole file; on any
error the temporary file is removed and an `OutputError` names the path and the OS error.
Before `last*.ckpt` is replaced, the old file is kept as `<name>.prev`: a resume from a
damaged `last.ckpt` falls back to it (`samft.commands.resume.resume_point`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from samft.io.files import OutputError, disk_full_error, write_error

PREV_SUFFIX = ".prev"


def previous_of(path: str | Path) -> Path:
    """Where the file replaced by the last save of `path` is kept."""
    path = Path(path)
    return path.with_name(path.name + PREV_SUFFIX)


def save_atomic(obj: Any, path: str | Path, keep_previous: bool = False) -> Path:
    """`torch.save(obj)` to `path` through a fsynced temporary file in the same folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous and path.is_file():
            os.replace(path, previous_of(path))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        full = disk_full_error(err)
        if full is not None:  # the previous checkpoint is still in place
            raise write_error(path, full, "saving checkpoint") from err
        if not isinstance(err, OSError):
            raise
        reason = err.strerror or str(err) or type(err).__name__
        raise OutputError(
            f"cannot save checkpoint {path}: {reason} (errno {err.errno}); free disk space "
            "or make the checkpoint folder writable (callbacks.*.dirpath, hydra.run.dir)"
        ) from err
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose saves are atomic and keep the previous `last*.ckpt`."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):  # remote: Lightning's fsspec path
            return super().save_checkpoint(checkpoint, path, storage_options)
        name = Path(path).name
        save_atomic(checkpoint, path, keep_previous=name.startswith("last"))

"""Tensor files on disk, safely: read a `.pth` / `.safetensors` without running code from
it, and prepare tensors for writing. The layer every checkpoint layout builds on."""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the requested model."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that refers to code (or any type outside the allow-list): refused, not run."""


# The non-tensor types samft's own files may hold beyond what `weights_only=True` accepts
# by itself (tensors, plain containers, numbers, strings). samft writes none today: its
# Lightning checkpoints hold plain dicts of hyper-parameters, loop and callback states and
# optimizer states (tests/weights/test_safe_load.py checks every file a run writes). A type
# added here is allowed by name, never imported from the file.
SAMFT_CHECKPOINT_TYPES: tuple[type, ...] = ()


def allowed_checkpoint_types():
    """Context in which `torch.load(weights_only=True)` (samft's or Lightning's own, inside
    `trainer.fit(ckpt_path=..., weights_only=True)`) also accepts SAMFT_CHECKPOINT_TYPES."""
    return torch.serialization.safe_globals(list(SAMFT_CHECKPOINT_TYPES))


def safe_torch_load(path: Path, mmap: bool = False) -> Any:
    """`torch.load` that never runs code: `weights_only=True` with samft's allow-list, on the
    CPU. There is no fallback to a full unpickle, whatever fails."""
    mmap = mmap and zipfile.is_zipfile(path)  # the legacy (non-zip) format cannot be mapped
    with allowed_checkpoint_types():
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def load_tensor_file(path: Path, mmap: bool = False) -> Any:
    """The contents of a `.pth` / `.ckpt` / `.safetensors` file, never running code from it.

    Raises UnsafeCheckpointError for a pickle that refers to code, CheckpointError for a
    missing, truncated or foreign file; each names the file.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(str(path), device="cpu")
        except Exception as err:  # SafetensorError, OSError: a bad header or a short file
            raise CheckpointError(
                f"cannot read safetensors checkpoint {path}: the file is truncated or "
                f"corrupt ({err})"
            ) from None
    try:
        return safe_torch_load(path, mmap=mmap)
    except pickle.UnpicklingError as err:
        code = _referenced_globals(path, err)
        if code:
            raise UnsafeCheckpointError(
                f"refusing to load checkpoint {path}: its pickle references "
                f"{', '.join(code)}, which is code rather than tensors. samft loads with "
                "torch.load(weights_only=True) and never runs anything from a checkpoint; "
                "re-save the weights as a plain state dict or as .safetensors"
            ) from None
        raise CheckpointError(f"cannot read checkpoint {path} safely: {_first_line(err)}") from None
    except Exception as err:  # truncated zip, empty file, not a checkpoint at all
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is truncated or corrupt, or not a "
            f"PyTorch checkpoint ({type(err).__name__}: {_first_line(err)})"
        ) from None


def _referenced_globals(path: Path, err: Exception) -> list[str]:
    """Names of the non-tensor globals a rejected pickle refers to (read, never imported)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: fall back to the loader's message
        found = re.findall(r"GLOBAL ([\w.]+)", str(err))
    return sorted(set(found))


def _first_line(err: Exception) -> str:
    """The first sentence of an error's message (torch's run on for several lines)."""
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return repr(err)
    return lines[0].split(". ")[0].rstrip(".")


def is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(v, Tensor) for v in obj.values())


def independent_tensors(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors, none sharing memory (safetensors requires it)."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, value in state_dict.items():
        tensor = value.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out

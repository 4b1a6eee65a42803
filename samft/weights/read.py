"""Read SAM weights from any file samft accepts, in the official layout.

Reading never runs code from the file: pickles go through `torch.load(weights_only=True)`,
which refuses anything but tensors and plain containers. Whatever the wrapping (a bare
state dict, `{"model": ...}`, `{"state_dict": ...}`, `module.` / `model.` prefixes, a
Lightning checkpoint with optimizer state, unmerged LoRA adapters), `read_state_dict`
returns the official layout: `image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor

from samft.model.lora import has_lora_keys, merge_lora_state_dict

SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
WRAPPER_PREFIXES = ("module.", "model.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the requested model."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The SAM weights in `path`, in the official layout (keys and, if LoRA, merged).

    A folder, or a file beside a SAM `config.json`, is read as a transformers `SamModel`
    checkpoint (`samft.weights.transformers_layout`).
    """
    path = Path(path)
    from samft.weights import transformers_layout as hf  # imports this module

    if path.is_dir() or hf.is_transformers_checkpoint(path):  # a transformers SamModel
        return hf.read_transformers_checkpoint(path)
    container = _load_file(path)
    state_dict, is_lightning = _unwrap(container, path)
    state_dict = _strip_prefixes(state_dict, path, drop_others=is_lightning)
    if has_lora_keys(state_dict):
        try:
            state_dict = merge_lora_state_dict(state_dict)
        except KeyError as err:
            raise CheckpointError(f"checkpoint {path}: {err.args[0]}") from None
    return state_dict


def _load_file(path: Path) -> Any:
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
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        code = _referenced_globals(path, err)
        if code:
            raise CheckpointError(
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
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else repr(err)


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(v, Tensor) for v in obj.values())


def _unwrap(container: Any, path: Path) -> tuple[dict[str, Tensor], bool]:
    """Find the state dict inside a checkpoint; also say whether it is a Lightning one."""
    is_lightning = isinstance(container, Mapping) and "pytorch-lightning_version" in container
    obj = container
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if _is_tensor_dict(obj) and obj:
            return dict(obj), is_lightning
        if not isinstance(obj, Mapping):
            break
        inner = next(
            (obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), None
        )
        if inner is None:
            break
        obj = inner
    if isinstance(obj, Mapping):
        bad = next((k for k, v in obj.items() if not isinstance(v, Tensor)), None)
        found = f"top-level keys {sorted(map(str, obj))[:8]}"
        if bad is not None and any(isinstance(v, Tensor) for v in obj.values()):
            found = f"key '{bad}' holds a {type(obj[bad]).__name__}, not a tensor"
    else:
        found = f"a {type(obj).__name__}"
    raise CheckpointError(
        f"no state dict found in checkpoint {path}: {found}; expected a dict of tensors, "
        "possibly inside 'model' or 'state_dict'"
    )


def _strip_prefixes(
    state_dict: dict[str, Tensor], path: Path, drop_others: bool
) -> dict[str, Tensor]:
    """`module.` / `model.` prefixes off SAM keys; non-SAM keys dropped if `drop_others`."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        name = key
        while not name.startswith(SAM_PARTS) and name.startswith(WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        if not name.startswith(SAM_PARTS):
            if drop_others:
                continue  # loss buffers, metrics: not part of the model
            name = key
        if name in out:
            raise CheckpointError(f"checkpoint {path}: key '{key}' duplicates '{name}'")
        out[name] = value
    return out

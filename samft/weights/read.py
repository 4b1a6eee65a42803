"""Read SAM weights from any file samft accepts, in the official layout.

Reading never runs code from the file: pickles go through `torch.load(weights_only=True)`,
which refuses anything but tensors and plain containers. Whatever the wrapping (a bare
state dict, `{"model": ...}`, `{"state_dict": ...}`, `module.` / `model.` prefixes, a
Lightning checkpoint with optimizer state, unmerged LoRA adapters), `read_state_dict`
returns the official layout: `image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*` for
SAM; Meta's `sam2` keys for SAM 2 (`image_encoder.trunk.*`, `sam_prompt_encoder.*`,
`sam_mask_decoder.*`, `no_mem_embed` and the video parts, see
`samft.weights.sam2_layout`), from Meta's `{"model": ...}` file as from samft's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from samft.model.lora import has_lora_keys, merge_lora_state_dict
from samft.weights import transformers_layout as hf
from samft.weights.files import CheckpointError, is_tensor_dict, load_tensor_file
from samft.weights.known import resolve_checkpoint
from samft.weights.sam2_layout import is_sam2_key
from samft.weights.transformers_sam2_map import (
    is_transformers_sam2_state_dict,
    transformers_to_sam2,
)

SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
WRAPPER_PREFIXES = ("module.", "model.")


def is_model_key(name: str) -> bool:
    """Whether a key (without wrapper prefixes) names a tensor of a SAM or SAM 2 model."""
    return name.startswith(SAM_PARTS) or is_sam2_key(name)


def read_state_dict(path: str | Path, cache_dir: str | Path | None = None) -> dict[str, Tensor]:
    """The SAM weights in `path`, in the official layout (keys and, if LoRA, merged).

    `path` may also name known weights (`sam_vit_b`, `litemedsam`, ...: see
    `samft.weights.known`), fetched into `cache_dir` on first use. A folder, or a file
    beside a SAM `config.json`, is read as a transformers `SamModel` / `Sam2Model`
    checkpoint (`samft.weights.transformers_layout`); a `Sam2Model` weights file alone is
    recognised from its keys (the variant comes from the shapes).
    """
    path = resolve_checkpoint(path, cache_dir)
    if path.is_dir() or hf.is_transformers_checkpoint(path):  # a transformers SamModel
        return hf.read_transformers_checkpoint(path)
    container = load_tensor_file(path)
    state_dict, is_lightning = _unwrap(container, path)
    state_dict = _strip_prefixes(state_dict, path, drop_others=is_lightning)
    if is_transformers_sam2_state_dict(state_dict):  # a Sam2Model's weights, without folder
        try:
            return transformers_to_sam2(state_dict)
        except CheckpointError as err:
            raise CheckpointError(f"checkpoint {path}: {err}") from None
    if has_lora_keys(state_dict):
        try:
            state_dict = merge_lora_state_dict(state_dict)
        except KeyError as err:
            raise CheckpointError(f"checkpoint {path}: {err.args[0]}") from None
    return state_dict


def _unwrap(container: Any, path: Path) -> tuple[dict[str, Tensor], bool]:
    """Find the state dict inside a checkpoint; also say whether it is a Lightning one."""
    is_lightning = isinstance(container, Mapping) and "pytorch-lightning_version" in container
    obj = container
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if is_tensor_dict(obj) and obj:
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
        while not is_model_key(name) and name.startswith(WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        if not is_model_key(name):
            if drop_others:
                continue  # loss buffers, metrics: not part of the model
            name = key
        if name in out:
            raise CheckpointError(f"checkpoint {path}: key '{key}' duplicates '{name}'")
        out[name] = value
    return out

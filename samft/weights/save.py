"""Write SAM weights in the official layout (`.pth` / `.safetensors`), LoRA merged.

The official layout is each family's own: a bare state dict for SAM (as Meta ships
`sam_vit_b_01ec64.pth`), `{"model": state_dict}` for SAM 2 (as Meta ships
`sam2.1_hiera_tiny.pt`, and as its `build_sam2` reads), with the carried video parts.
safetensors files are flat state dicts for both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor, nn

from samft.io.files import disk_full_error, write_error
from samft.model.lora import has_lora_keys, merge_lora_state_dict
from samft.weights.files import CheckpointError, independent_tensors
from samft.weights.read import SAM_PARTS, _strip_prefixes
from samft.weights.sam2_layout import is_sam2_state_dict

SAM2_CONTAINER_KEY = "model"  # Meta's SAM 2 files: {"model": state_dict}


def save_sam(model_or_state_dict: nn.Module | Mapping[str, Tensor], path: str | Path) -> Path:
    """Write SAM weights in the official layout: `.pth`/`.pt` (a bare state dict for SAM,
    `{"model": state_dict}` for SAM 2, as Meta ships them) or `.safetensors`, chosen by
    extension. Written to a temporary file and moved into place, so a crash never leaves a
    half-written checkpoint."""
    path = Path(path)
    if path.suffix not in (".safetensors", ".pth", ".pt"):
        raise CheckpointError(
            f"cannot save checkpoint {path}: unknown extension '{path.suffix}'; "
            "use .pth, .pt or .safetensors"
        )
    if isinstance(model_or_state_dict, nn.Module):
        state_dict = model_or_state_dict.state_dict()
    else:
        state_dict = dict(model_or_state_dict)
    state_dict = _strip_prefixes(state_dict, path, drop_others=True)
    if not state_dict:
        raise CheckpointError(
            f"cannot save checkpoint {path}: no SAM weights (keys starting with "
            f"{', '.join(SAM_PARTS)}, or SAM 2's sam_prompt_encoder., ...) in what was given"
        )
    if has_lora_keys(state_dict):
        state_dict = merge_lora_state_dict(state_dict)
    tensors = independent_tensors(state_dict)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # through a Python file, so a failed write is an OSError with its errno (torch's and
        # safetensors' own writers report a full disk as an internal error)
        if path.suffix == ".safetensors":
            data = safetensors.torch.save(tensors, metadata={"format": "pt"})
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        else:
            # SAM 2: Meta's {"model": state_dict}; SAM: a bare state dict
            content = {SAM2_CONTAINER_KEY: tensors} if is_sam2_state_dict(tensors) else tensors
            with open(tmp, "wb") as handle:
                torch.save(content, handle)
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise write_error(path, err) from err
    except RuntimeError as err:  # torch's writer: a full disk as "unexpected pos"
        full = disk_full_error(err)
        if full is None:
            raise
        raise write_error(path, full) from err
    finally:
        tmp.unlink(missing_ok=True)
    return path

"""Read and write SAM weights: official `.pth`, `.safetensors`, and samft's Lightning checkpoints.

Reading never runs code from the file: pickles go through `torch.load(weights_only=True)`,
which refuses anything but tensors and plain containers. Whatever the wrapping (a bare
state dict, `{"model": ...}`, `{"state_dict": ...}`, `module.` / `model.` prefixes, a
Lightning checkpoint with optimizer state, unmerged LoRA adapters), `read_state_dict`
returns the official layout: `image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`.
Writing produces that same layout, which `segment_anything` loads strictly.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samft.model.image_encoder import resize_rel_pos
from samft.model.lora import has_lora_keys, merge_lora_state_dict
from samft.model.registry import VARIANTS, build_sam, get_hyper_params
from samft.model.sam import Sam

SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
WRAPPER_PREFIXES = ("module.", "model.")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
POS_EMBED = "image_encoder.pos_embed"
PATCH_WEIGHT = "image_encoder.patch_embed.proj.weight"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the requested model."""


# --------------------------------------------------------------------------- reading
def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The SAM weights in `path`, in the official layout (keys and, if LoRA, merged)."""
    path = Path(path)
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


# ------------------------------------------------------------------ architecture
def _describe(state_dict: Mapping[str, Tensor]) -> dict[str, int]:
    """Architecture numbers readable from tensor shapes alone."""
    try:
        patch = state_dict[PATCH_WEIGHT]
        head_dim = state_dict["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
        return {
            "encoder_embed_dim": patch.shape[0],
            "patch_size": patch.shape[-1],
            "encoder_depth": _count_indexed(state_dict, "image_encoder.blocks."),
            "encoder_num_heads": patch.shape[0] // head_dim,
            "prompt_embed_dim": state_dict["mask_decoder.iou_token.weight"].shape[1],
            "decoder_depth": _count_indexed(state_dict, "mask_decoder.transformer.layers."),
            "decoder_mlp_dim": state_dict[
                "mask_decoder.transformer.layers.0.mlp.lin1.weight"
            ].shape[0],
            "iou_head_hidden_dim": state_dict[
                "mask_decoder.iou_prediction_head.layers.0.weight"
            ].shape[0],
        }
    except KeyError as err:
        raise CheckpointError(f"not a SAM state dict: it has no key {err}") from None


def _count_indexed(state_dict: Iterable[str], prefix: str) -> int:
    return len({k[len(prefix) :].split(".", 1)[0] for k in state_dict if k.startswith(prefix)})


def infer_variant(state_dict: Mapping[str, Tensor]) -> str:
    """The registry variant whose architecture has these tensor shapes."""
    found = _describe(state_dict)
    for name, hp in VARIANTS.items():
        if all(getattr(hp, field) == value for field, value in found.items()):
            return name
    raise CheckpointError(
        f"state dict matches no known SAM variant: it has {found}; known variants are "
        f"{sorted(VARIANTS)}"
    )


def infer_image_size(state_dict: Mapping[str, Tensor]) -> int:
    """The input size S the weights were saved for, from the position-embedding grid."""
    try:
        return state_dict[POS_EMBED].shape[1] * state_dict[PATCH_WEIGHT].shape[-1]
    except KeyError as err:
        raise CheckpointError(f"not a SAM state dict: it has no key {err}") from None


def resize_position_embeddings(
    state_dict: Mapping[str, Tensor],
    image_size: int,
    global_attn_indexes: Iterable[int] | None = None,
) -> dict[str, Tensor]:
    """Adapt weights saved at one input size to another (e.g. 1024 -> 512 px).

    The absolute position embedding (`1 x g x g x C`) is resampled bicubically (with
    antialiasing when shrinking) to the new grid. The relative-position tables of the
    global-attention blocks span the whole grid (`2g - 1` rows) and are resampled
    linearly; windowed blocks keep theirs. `global_attn_indexes` None means the
    variant's own, inferred from the shapes.
    """
    out = dict(state_dict)
    old_grid = state_dict[POS_EMBED].shape[1]
    patch = state_dict[PATCH_WEIGHT].shape[-1]
    if image_size % patch:
        raise ValueError(f"image_size {image_size} is not a multiple of the patch size {patch}")
    grid = image_size // patch
    if grid == old_grid:
        return out
    if global_attn_indexes is None:
        global_attn_indexes = get_hyper_params(
            infer_variant(state_dict)
        ).encoder_global_attn_indexes

    pos = state_dict[POS_EMBED]
    resized = F.interpolate(
        pos.permute(0, 3, 1, 2).float(),
        size=(grid, grid),
        mode="bicubic",
        align_corners=False,
        antialias=grid < old_grid,
    )
    out[POS_EMBED] = resized.permute(0, 2, 3, 1).to(pos.dtype).contiguous()
    for index in global_attn_indexes:
        for axis in ("h", "w"):
            key = f"image_encoder.blocks.{index}.attn.rel_pos_{axis}"
            if state_dict[key].shape[0] != 2 * old_grid - 1:
                raise ValueError(
                    f"{key} has {state_dict[key].shape[0]} rows; a global block of a "
                    f"{old_grid} x {old_grid} grid needs {2 * old_grid - 1}"
                )
            out[key] = resize_rel_pos(state_dict[key], 2 * grid - 1).contiguous()
    return out


# ------------------------------------------------------------------ loading
def _global_blocks(model: Sam) -> list[int]:
    return [i for i, block in enumerate(model.image_encoder.blocks) if block.window_size == 0]


def _preview(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _mismatch(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> str:
    """A readable list of missing, unexpected and wrongly shaped keys ('' if none)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [
        f"{k} (file {tuple(given[k].shape)}, model {tuple(expected[k].shape)})"
        for k in sorted(set(expected) & set(given))
        if given[k].shape != expected[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_preview(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches ({len(shapes)}): {_preview(shapes, 3)}")
    return "; ".join(parts)


def _load_strict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    problems = _mismatch(model.state_dict(), state_dict)
    if problems:
        raise CheckpointError(f"checkpoint {source} does not fit the model: {problems}")
    model.load_state_dict(state_dict, strict=True)


def load_weights_into(model: Sam, path: str | Path) -> Sam:
    """Load `path` strictly into `model`, resampling position embeddings to its size."""
    state_dict = read_state_dict(path)
    if POS_EMBED in state_dict and infer_image_size(state_dict) != model.image_size:
        state_dict = resize_position_embeddings(state_dict, model.image_size, _global_blocks(model))
    _load_strict(model, state_dict, str(path))
    return model


def read_sam_state_dict(
    path: str | Path, variant: str | None = None
) -> tuple[dict[str, Tensor], str]:
    """The SAM weights in `path` and their variant, for commands that take any checkpoint.

    A file that holds no SAM, or another variant than `variant`, is a CheckpointError that
    names the file and the kinds of checkpoint samft reads.
    """
    state_dict = read_state_dict(path)
    try:
        found = infer_variant(state_dict)
    except CheckpointError as err:
        raise CheckpointError(
            f"checkpoint={path}: {err}. Expected Meta's SAM .pth, a samft Lightning checkpoint "
            "(.ckpt from `samft train`) or a samft export (.pth / .safetensors)"
        ) from None
    if variant is not None and variant != found:
        raise CheckpointError(f"checkpoint={path} holds a '{found}' SAM, not variant={variant!r}")
    return state_dict, found


def load_sam(
    path: str | Path,
    variant: str | None = None,
    image_size: int | None = None,
    activation_checkpointing: bool = False,
) -> Sam:
    """Build the SAM stored in `path` (eval mode).

    `variant` None infers it from the tensor shapes; a given one must agree with the
    file. `image_size` None keeps the size the weights were saved at; another size
    resamples the position embeddings.
    """
    state_dict = read_state_dict(path)
    try:
        inferred: str | None = infer_variant(state_dict)
    except CheckpointError as err:
        if variant is None:
            raise CheckpointError(f"checkpoint {path}: {err}") from None
        inferred = None
    requested: str = variant if variant is not None else inferred  # type: ignore[assignment]
    if inferred is not None and requested != inferred:
        with torch.device("meta"):  # shapes only: nothing is allocated or initialised
            expected = build_sam(requested, image_size=_saved_size(state_dict, requested))
        expected = expected.state_dict()
        raise CheckpointError(
            f"checkpoint {path} holds a '{inferred}' SAM but variant '{requested}' was "
            f"requested: {_mismatch(expected, state_dict)}"
        )
    size = image_size if image_size is not None else _saved_size(state_dict, requested)
    model = build_sam(requested, image_size=size, activation_checkpointing=activation_checkpointing)
    if POS_EMBED in state_dict and infer_image_size(state_dict) != model.image_size:
        state_dict = resize_position_embeddings(state_dict, size, _global_blocks(model))
    _load_strict(model, state_dict, str(path))
    return model


def _saved_size(state_dict: Mapping[str, Tensor], variant: str) -> int:
    if POS_EMBED in state_dict and PATCH_WEIGHT in state_dict:
        return infer_image_size(state_dict)
    return get_hyper_params(variant).image_size


# ------------------------------------------------------------------ writing
def save_sam(model_or_state_dict: nn.Module | Mapping[str, Tensor], path: str | Path) -> Path:
    """Write SAM weights in the official layout: `.pth`/`.pt` (a bare state dict, as Meta
    ships them) or `.safetensors`, chosen by extension. Written to a temporary file and
    moved into place, so a crash never leaves a half-written checkpoint."""
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
            f"{', '.join(SAM_PARTS)}) in what was given"
        )
    if has_lora_keys(state_dict):
        state_dict = merge_lora_state_dict(state_dict)
    tensors = _independent_tensors(state_dict)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if path.suffix == ".safetensors":
            safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt"})
        else:
            torch.save(tensors, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _independent_tensors(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
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

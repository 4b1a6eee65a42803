"""Build the SAM a checkpoint holds: the one way to get a model with weights.

A SAM 2 file (Meta's `{"model": ...}` or samft's export) builds a `Sam2`; its image model
loads strictly and its video parts are carried (`samft.model.sam2.carried`): all of a
video model's core parts or none, each kept bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from samft.model.registry import Sam2HyperParams, build_sam, get_hyper_params
from samft.model.sam import Sam
from samft.model.sam2 import Sam2
from samft.model.sam2.carried import is_video_part
from samft.weights.files import CheckpointError
from samft.weights.finite import assert_finite
from samft.weights.read import read_state_dict
from samft.weights.sam2_layout import check_video_parts, video_keys
from samft.weights.shapes import (
    PATCH_WEIGHT,
    POS_EMBED,
    TINY_VIT_HEAD_KEYS,
    infer_image_size,
    infer_variant,
    resize_position_embeddings,
)


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
    given: Mapping[str, Tensor] = state_dict
    if isinstance(model, Sam2):  # the video parts are carried, not the model's own tensors
        check_video_parts(state_dict, source)
        given = {k: v for k, v in state_dict.items() if not is_video_part(k)}
    problems = _mismatch(model.state_dict(), given)
    if problems:
        raise CheckpointError(f"checkpoint {source} does not fit the model: {problems}")
    model.load_state_dict(state_dict, strict=True)


def _agrees(requested: str, found: str, state_dict: Mapping[str, Tensor]) -> bool:
    """Whether a file whose shapes say `found` may be loaded as `requested`: the same
    variant, or a SAM 2 image model of the same shape without video parts (2.0 and 2.1
    differ only there)."""
    if requested == found:
        return True
    hp, found_hp = get_hyper_params(requested), get_hyper_params(found)
    same_image_model = isinstance(hp, Sam2HyperParams) and hp == found_hp
    return same_image_model and not video_keys(state_dict)


def _version_mismatch(path: str | Path, found: str, requested: str) -> str | None:
    """The message for a SAM 2.0 file asked for as 2.1 or the reverse, else None."""
    hp, found_hp = get_hyper_params(requested), get_hyper_params(found)
    if not (isinstance(hp, Sam2HyperParams) and hp == found_hp):
        return None
    names = {"sam2": "SAM 2.0", "sam2.1": "SAM 2.1"}
    version = found.split("_hiera_")[0]
    return (
        f"checkpoint {path} holds a {names[version]} model ('{found}': its video parts "
        f"{'have' if version == 'sam2.1' else 'lack'} no_obj_embed_spatial and "
        f"obj_ptr_tpos_proj) but variant '{requested}' was requested; the image models are "
        f"the same: ask for '{found}' (or leave the variant out)"
    )


def read_sam_state_dict(
    path: str | Path, variant: str | None = None, cache_dir: str | Path | None = None
) -> tuple[dict[str, Tensor], str]:
    """The SAM weights in `path` and their variant, for commands that take any checkpoint.

    A file that holds no SAM, or another variant than `variant`, is a CheckpointError that
    names the file and the kinds of checkpoint samft reads. Known weights names are
    fetched into `cache_dir` (see `samft.weights.known`).
    """
    state_dict = read_state_dict(path, cache_dir)
    assert_finite(state_dict, path)
    try:
        found = infer_variant(state_dict)
    except CheckpointError as err:
        raise CheckpointError(
            f"checkpoint={path}: {err}. Expected Meta's SAM .pth, a samft Lightning "
            "checkpoint (.ckpt from `samft train`), a samft export (.pth / .safetensors) or "
            "Meta's SAM 2 .pt"
        ) from None
    check_video_parts(state_dict, f"={path}")  # Meta's build_sam2 refuses a partial one
    if variant is not None and not _agrees(variant, found, state_dict):
        message = _version_mismatch(f"={path}", found, variant)
        raise CheckpointError(
            message or f"checkpoint={path} holds a '{found}' SAM, not variant={variant!r}"
        )
    return state_dict, variant if variant is not None else found


def load_sam(
    path: str | Path,
    variant: str | None = None,
    image_size: int | None = None,
    activation_checkpointing: bool = False,
    cache_dir: str | Path | None = None,
) -> Sam | Sam2:
    """Build the SAM (a `Sam2` for SAM 2 weights) stored in `path` (eval mode).

    `path` is a checkpoint file, a transformers folder or the name of known weights
    (`sam_vit_b`, `mobile_sam`, `litemedsam`, ...), fetched once into `cache_dir` (default
    `$SAMFT_CACHE` or `~/.cache/samft`). `variant` None infers it from the tensor shapes;
    a given one must agree with the file. `image_size` None keeps the size the weights
    were saved at; another size resamples the position embeddings.
    """
    state_dict = read_state_dict(path, cache_dir)
    assert_finite(state_dict, path)
    try:
        inferred: str | None = infer_variant(state_dict)
    except CheckpointError as err:
        if variant is None:
            raise CheckpointError(f"checkpoint {path}: {err}") from None
        inferred = None
    requested: str = variant if variant is not None else inferred  # type: ignore[assignment]
    if inferred is not None and not _agrees(requested, inferred, state_dict):
        message = _version_mismatch(path, inferred, requested)
        if message:
            raise CheckpointError(message)
        with torch.device("meta"):  # shapes only: nothing is allocated or initialised
            expected = build_sam(requested, image_size=_saved_size(state_dict, requested))
        expected = expected.state_dict()
        if isinstance(get_hyper_params(requested), Sam2HyperParams):
            state_dict = {k: v for k, v in state_dict.items() if not is_video_part(k)}
        raise CheckpointError(
            f"checkpoint {path} holds a '{inferred}' SAM but variant '{requested}' was "
            f"requested: {_mismatch(expected, state_dict)}"
        )
    size = image_size if image_size is not None else _saved_size(state_dict, requested)
    model = build_sam(requested, image_size=size, activation_checkpointing=activation_checkpointing)
    if POS_EMBED in state_dict and infer_image_size(state_dict) != model.image_size:
        state_dict = resize_position_embeddings(state_dict, size, _global_blocks(model))
    _load_strict(model, _fit_classifier_head(state_dict, model), str(path))
    return model


def _fit_classifier_head(state_dict: Mapping[str, Tensor], model: Sam) -> Mapping[str, Tensor]:
    """MobileSAM's checkpoint holds an unused ImageNet classifier (`norm_head`, `head`)
    that its model builds: keep the model's own (unused) buffers where a vit_t file lacks
    them, and drop them from a file whose model has none."""
    expected = model.state_dict()
    out = dict(state_dict)
    for key in TINY_VIT_HEAD_KEYS:
        if key in expected and key not in out:
            out[key] = expected[key]
        elif key not in expected:
            out.pop(key, None)
    return out


def _saved_size(state_dict: Mapping[str, Tensor], variant: str) -> int:
    if POS_EMBED in state_dict and PATCH_WEIGHT in state_dict:
        return infer_image_size(state_dict)
    return get_hyper_params(variant).image_size

"""Build the SAM a checkpoint holds: the one way to get a model with weights."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from samft.model.registry import build_sam, get_hyper_params
from samft.model.sam import Sam
from samft.weights.files import CheckpointError
from samft.weights.finite import assert_finite
from samft.weights.read import read_state_dict
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
    problems = _mismatch(model.state_dict(), state_dict)
    if problems:
        raise CheckpointError(f"checkpoint {source} does not fit the model: {problems}")
    model.load_state_dict(state_dict, strict=True)


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
    cache_dir: str | Path | None = None,
) -> Sam:
    """Build the SAM stored in `path` (eval mode).

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

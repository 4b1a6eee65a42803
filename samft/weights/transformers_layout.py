"""Hugging Face transformers' `SamModel` checkpoints: read them, and write them.

A transformers SAM checkpoint is a folder (e.g. `facebook/sam-vit-base`): `config.json`
(`model_type` "sam"), the weights (`model.safetensors`, `pytorch_model.bin`, or shards
listed by a `*.index.json`) and `preprocessor_config.json` for `SamProcessor`.
`read_transformers_checkpoint` returns the official layout; `write_transformers_checkpoint`
writes a folder that `SamModel.from_pretrained` and `SamProcessor.from_pretrained` load.
Keys and configs come from `samft.weights.transformers_map`; transformers itself is not needed.

The written config sets the mask decoder's `layer_norm_eps` to 1e-5, the eps of the
official decoder's LayerNorms (transformers' default is 1e-6), so `SamModel` computes
exactly what samft and Meta's model compute.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import Tensor

from samft.model.registry import SamHyperParams, get_hyper_params
from samft.model.sam import PIXEL_MEAN, PIXEL_STD
from samft.weights.files import (
    CheckpointError,
    independent_tensors,
    is_tensor_dict,
    load_tensor_file,
)
from samft.weights.shapes import infer_image_size, infer_variant, resize_position_embeddings
from samft.weights.transformers_map import (
    official_to_transformers,
    preprocessor_config,
    transformers_config,
    transformers_to_official,
)

__all__ = [
    "is_transformers_checkpoint",
    "official_to_transformers",
    "preprocessor_config",
    "read_transformers_checkpoint",
    "transformers_config",
    "transformers_to_official",
    "transformers_weights_path",
    "write_transformers_checkpoint",
]

CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
WEIGHTS = "model.safetensors"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# what an earlier export (or `save_pretrained`) leaves in a folder we may replace
REPLACEABLE = {CONFIG, PREPROCESSOR, "processor_config.json", *WEIGHT_FILES}
# config fields the tensor shapes do not show, checked against the variant on reading
CHECKED_FIELDS = {
    "vision_config": ("global_attn_indexes", "window_size", "use_abs_pos", "use_rel_pos"),
    "mask_decoder_config": ("num_attention_heads", "hidden_act"),
    "prompt_encoder_config": ("hidden_act",),
}


# ---------------------------------------------------------------------------- reading
def _model_type(config_path: Path) -> str | None:
    try:
        return json.loads(config_path.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def is_transformers_checkpoint(path: str | Path) -> bool:
    """A folder holding `config.json`, or a file beside a `config.json` of a SAM."""
    path = Path(path)
    if path.is_dir():
        return (path / CONFIG).is_file()
    return path.is_file() and _model_type(path.parent / CONFIG) == "sam"


def read_transformers_config(folder: Path) -> dict[str, Any]:
    """`folder/config.json`, checked to be transformers' SAM."""
    config_path = folder / CONFIG
    if not config_path.is_file():
        raise CheckpointError(
            f"checkpoint folder {folder} has no {CONFIG}; a folder must be a transformers "
            f"SamModel checkpoint ({CONFIG} and {' or '.join(WEIGHT_FILES[::2])})"
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {config_path}: {err}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "sam":
        raise CheckpointError(
            f"{config_path} describes model_type={model_type!r}, not transformers' SAM "
            "(model_type 'sam')"
        )
    return config


def transformers_weights_path(path: str | Path) -> Path:
    """The weights file of a transformers checkpoint folder (or `path` if it is a file)."""
    path = Path(path)
    if path.is_file():
        return path
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise CheckpointError(
        f"checkpoint folder {path} has no weights file: expected one of {', '.join(WEIGHT_FILES)}"
    )


def read_transformers_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The SAM weights of a transformers checkpoint (folder or weights file), official keys."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    config = read_transformers_config(folder)
    weights = transformers_weights_path(path)
    files = [weights]
    if weights.name.endswith(".index.json"):
        try:
            weight_map = json.loads(weights.read_text())["weight_map"]
            files = [folder / name for name in dict.fromkeys(weight_map.values())]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"cannot read the shard index {weights}: {err!r}") from None
    state_dict: dict[str, Tensor] = {}
    for file in files:
        container = load_tensor_file(file)
        if not is_tensor_dict(container):
            raise CheckpointError(f"checkpoint {file} is not a flat dict of tensors")
        state_dict.update(container)
    try:
        state_dict = transformers_to_official(state_dict)
    except CheckpointError as err:
        raise CheckpointError(f"checkpoint {weights}: {err}") from None
    _check_config(config, state_dict, folder / CONFIG)
    return state_dict


def _check_config(config: Mapping[str, Any], state_dict: Mapping[str, Tensor], where: Path) -> None:
    """Refuse a config whose attention layout differs from the variant the shapes show
    (samft builds that variant; the weights would load into another network)."""
    try:
        variant = infer_variant(state_dict)
    except CheckpointError:
        return  # no known variant: the loader says so, with the shapes it found
    expected = transformers_config(get_hyper_params(variant), infer_image_size(state_dict))
    for part, fields in CHECKED_FIELDS.items():
        given = config.get(part) or {}
        for field in fields:
            value = given.get(field, expected[part][field])
            value = list(value) if isinstance(value, (list, tuple)) else value
            if value != expected[part][field]:
                raise CheckpointError(
                    f"{where}: {part}.{field}={value!r}, but its weights have the shapes of "
                    f"samft's '{variant}', which has {expected[part][field]!r}"
                )


# ---------------------------------------------------------------------------- writing
def write_transformers_checkpoint(
    state_dict: Mapping[str, Tensor],
    folder: str | Path,
    image_size: int | None = None,
    hyper_params: SamHyperParams | None = None,
    pixel_mean: Sequence[float] = PIXEL_MEAN,
    pixel_std: Sequence[float] = PIXEL_STD,
) -> dict[str, Path]:
    """Write official-layout weights (LoRA already merged) as a transformers folder.

    `image_size` None keeps the size of the weights; another resamples the position
    embeddings. `hyper_params` None infers the variant from the shapes. The folder is
    written beside its target and renamed into place; an existing one is replaced only
    if it is empty or holds nothing but an earlier export. Returns the paths of
    "config", "weights" and "preprocessor".
    """
    folder = Path(folder)
    hp = hyper_params or get_hyper_params(infer_variant(state_dict))
    saved = infer_image_size(state_dict)
    size = int(image_size or saved)
    if size != saved:
        state_dict = resize_position_embeddings(state_dict, size, hp.encoder_global_attn_indexes)
    tensors = independent_tensors(official_to_transformers(state_dict))
    dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    files = {
        CONFIG: transformers_config(hp, size, dtype),
        PREPROCESSOR: preprocessor_config(size, pixel_mean, pixel_std),
    }
    _check_replaceable(folder)

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, content in files.items():
            (tmp / name).write_text(json.dumps(content, indent=2) + "\n")
        safetensors.torch.save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            try:
                os.replace(tmp, folder)
            except OSError:
                os.replace(old, folder)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "config": folder / CONFIG,
        "weights": folder / WEIGHTS,
        "preprocessor": folder / PREPROCESSOR,
    }


def _check_replaceable(folder: Path) -> None:
    if not folder.exists():
        return
    if not folder.is_dir():
        raise CheckpointError(f"cannot write a transformers checkpoint to {folder}: it is a file")
    names = {entry.name for entry in folder.iterdir()}
    if names and not (names <= REPLACEABLE and _model_type(folder / CONFIG) == "sam"):
        raise CheckpointError(
            f"cannot write a transformers checkpoint to {folder}: the folder exists and holds "
            f"other files than an earlier export ({', '.join(sorted(names)[:6])}); choose "
            "another output or empty it"
        )

"""Hugging Face transformers' `SamModel` and `Sam2Model` checkpoints: read them, and write them.

A transformers SAM checkpoint is a folder (e.g. `facebook/sam-vit-base`): `config.json`
(`model_type` "sam", or "sam2" for SAM 2's `Sam2Model`), the weights
(`model.safetensors`, `pytorch_model.bin`, or shards listed by a `*.index.json`) and
`preprocessor_config.json` for `SamProcessor` / `Sam2Processor`.
`read_transformers_checkpoint` returns the official layout (Meta's `sam2` keys for SAM 2);
`write_transformers_checkpoint` writes a folder that `SamModel.from_pretrained` (or
`Sam2Model.from_pretrained`) and the processor load. Keys and configs come from
`samft.weights.transformers_map` (SAM) and `samft.weights.transformers_sam2_map` (SAM 2);
transformers itself is not needed. A SAM 2 export holds the image model only: `Sam2Model`
has no place for Meta's video parts (the official export keeps them).

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

from samft.model.registry import Sam2HyperParams, SamHyperParams, get_hyper_params
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
from samft.weights.transformers_sam2_map import (
    CHECKED_FIELDS as SAM2_CHECKED_FIELDS,
)
from samft.weights.transformers_sam2_map import (
    MODEL_TYPE as SAM2_MODEL_TYPE,
)
from samft.weights.transformers_sam2_map import (
    sam2_preprocessor_config,
    sam2_to_transformers,
    sam2_transformers_config,
    transformers_to_sam2,
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
MODEL_TYPES = ("sam", SAM2_MODEL_TYPE)  # SamModel, Sam2Model
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
    return path.is_file() and _model_type(path.parent / CONFIG) in MODEL_TYPES


def read_transformers_config(folder: Path) -> dict[str, Any]:
    """`folder/config.json`, checked to be transformers' SAM or SAM 2."""
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
    if model_type not in MODEL_TYPES:
        video = (
            " (Sam2VideoModel: not read yet; use Meta's .pt)" if model_type == "sam2_video" else ""
        )
        raise CheckpointError(
            f"{config_path} describes model_type={model_type!r}{video}, not transformers' SAM "
            "(model_type 'sam') or SAM 2 (model_type 'sam2')"
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
    """The SAM weights of a transformers checkpoint (folder or weights file), official keys
    (Meta's `sam2` keys for a `Sam2Model`)."""
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
    is_sam2 = config["model_type"] == SAM2_MODEL_TYPE
    try:
        state_dict = (transformers_to_sam2 if is_sam2 else transformers_to_official)(state_dict)
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
    hp = get_hyper_params(variant)
    if isinstance(hp, Sam2HyperParams):
        expected = sam2_transformers_config(hp)
        paths = SAM2_CHECKED_FIELDS
    else:
        expected = transformers_config(hp, infer_image_size(state_dict))
        paths = tuple((part, f) for part, fields in CHECKED_FIELDS.items() for f in fields)
    for path in paths:
        value, want = _field(config, path), _field(expected, path)
        value = want if value is None else value
        value = list(value) if isinstance(value, (list, tuple)) else value
        if value != want:
            raise CheckpointError(
                f"{where}: {'.'.join(path)}={value!r}, but its weights have the shapes of "
                f"samft's '{variant}', which has {want!r}"
            )


def _field(config: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """`config[path[0]][path[1]]...`, None where a level is missing (a default)."""
    value: Any = config
    for name in path:
        value = value.get(name) if isinstance(value, Mapping) else None
    return value


# ---------------------------------------------------------------------------- writing
def write_transformers_checkpoint(
    state_dict: Mapping[str, Tensor],
    folder: str | Path,
    image_size: int | None = None,
    hyper_params: SamHyperParams | Sam2HyperParams | None = None,
    pixel_mean: Sequence[float] = PIXEL_MEAN,
    pixel_std: Sequence[float] = PIXEL_STD,
) -> dict[str, Path]:
    """Write official-layout weights (LoRA already merged) as a transformers folder: a
    `SamModel`, or a `Sam2Model` for SAM 2 weights (their video parts left out).

    `image_size` None keeps the size of the weights; another resamples a ViT's position
    embeddings (Hiera runs at any multiple of its stride). `pixel_mean` / `pixel_std`
    are SAM's (SAM 2's ImageNet statistics are fixed). `hyper_params` None infers the
    variant from the shapes. The folder is
    written beside its target and renamed into place; an existing one is replaced only
    if it is empty or holds nothing but an earlier export. Returns the paths of
    "config", "weights" and "preprocessor".
    """
    folder = Path(folder)
    hp = hyper_params or get_hyper_params(infer_variant(state_dict))
    saved = infer_image_size(state_dict)
    size = int(image_size or saved)
    if isinstance(hp, Sam2HyperParams):
        tensors = independent_tensors(sam2_to_transformers(state_dict))
        config = sam2_transformers_config(hp, size, _dtype(tensors))
        files = {CONFIG: config, PREPROCESSOR: sam2_preprocessor_config(size)}
    else:
        if size != saved:
            state_dict = resize_position_embeddings(
                state_dict, size, hp.encoder_global_attn_indexes
            )
        tensors = independent_tensors(official_to_transformers(state_dict))
        files = {
            CONFIG: transformers_config(hp, size, _dtype(tensors)),
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


def _dtype(tensors: Mapping[str, Tensor]) -> str:
    return str(next(iter(tensors.values())).dtype).removeprefix("torch.")


def _check_replaceable(folder: Path) -> None:
    if not folder.exists():
        return
    if not folder.is_dir():
        raise CheckpointError(f"cannot write a transformers checkpoint to {folder}: it is a file")
    names = {entry.name for entry in folder.iterdir()}
    if names and not (names <= REPLACEABLE and _model_type(folder / CONFIG) in MODEL_TYPES):
        raise CheckpointError(
            f"cannot write a transformers checkpoint to {folder}: the folder exists and holds "
            f"other files than an earlier export ({', '.join(sorted(names)[:6])}); choose "
            "another output or empty it"
        )

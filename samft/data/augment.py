"""Albumentations pipelines built from plain specs, applied to an image and all its masks.

A spec is a dict naming an albumentations class and its arguments, e.g.
`{"name": "HorizontalFlip", "p": 0.5}`; composites (OneOf, SomeOf, Sequential) take a
`transforms` list of specs. Normalisation is refused: the model normalises and pads pixels
itself, once, exactly as at inference, so the pipeline must return uint8 RGB.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import numpy as np

from samft.data.errors import DataError

# Transforms that would normalise or convert pixels, which is the model's job.
_REFUSED = {
    "Normalize": "the model normalises pixels itself (Sam.preprocess)",
    "ToTensorV2": "the dataset converts to tensors itself",
    "ToFloat": "the pipeline must return uint8 pixels",
}

AugmentSpec = Mapping[str, Any]


def _as_tuples(value: Any) -> Any:
    """YAML gives lists where albumentations expects tuples (sizes, ranges)."""
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    return value


def build_transform(spec: AugmentSpec, where: str = "augment") -> A.BasicTransform | A.BaseCompose:
    """One albumentations transform from `{"name": ..., **arguments}`."""
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise DataError(f"{where}: expected a mapping with a 'name' key, got {spec!r}")
    options = dict(spec)
    name = options.pop("name")
    if name in _REFUSED:
        raise DataError(f"{where}: {name} is not allowed here: {_REFUSED[name]}")
    cls = getattr(A, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, (A.BasicTransform, A.BaseCompose))):
        raise DataError(f"{where}.name = {name!r} is not an albumentations transform")
    if issubclass(cls, A.BaseCompose):
        children = options.pop("transforms", None)
        if not isinstance(children, Sequence) or isinstance(children, str):
            raise DataError(f"{where}: {name} needs a 'transforms' list of specs")
        options["transforms"] = [
            build_transform(child, f"{where}.transforms[{i}]") for i, child in enumerate(children)
        ]
    else:
        options = {key: _as_tuples(value) for key, value in options.items()}
        options["strict"] = True  # an unknown argument is an error, not a warning
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: cannot build {name} from {dict(spec)!r}: {exc}") from exc


def build_augment(specs: Sequence[AugmentSpec] | A.BaseCompose | None) -> A.Compose | None:
    """An `A.Compose` from a list of specs; a ready Compose is returned as is, None stays None."""
    if specs is None or isinstance(specs, A.BaseCompose):
        return specs
    if isinstance(specs, (str, Mapping)) or not isinstance(specs, Sequence):
        raise DataError(f"train_augment: expected a list of transform specs, got {specs!r}")
    if not specs:
        return None
    transforms = [build_transform(spec, f"train_augment[{i}]") for i, spec in enumerate(specs)]
    return A.Compose(transforms)


def apply_augment(
    pipeline: A.BaseCompose, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Augment an H x W x 3 uint8 image and its N x H x W bool masks together.

    The pipeline's random state is drawn from `rng`, so a sample is reproducible from its
    seed and two DataLoader workers never repeat each other's augmentations.
    """
    pipeline.set_random_state(
        np.random.default_rng(int(rng.integers(2**63))), random.Random(int(rng.integers(2**63)))
    )
    out = pipeline(image=image, masks=masks.astype(np.uint8))
    new_image = np.ascontiguousarray(out["image"])
    if new_image.dtype != np.uint8 or new_image.ndim != 3 or new_image.shape[2] != 3:
        raise DataError(
            f"train_augment returned an image of dtype {new_image.dtype} and shape "
            f"{new_image.shape}; expected H x W x 3 uint8"
        )
    new_masks = np.asarray(out["masks"]).astype(bool).reshape(-1, *new_image.shape[:2])
    return new_image, new_masks

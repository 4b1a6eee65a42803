"""Which training runs a cache can serve: a frozen encoder and flips-only augmentation."""

from __future__ import annotations

from typing import Any

from samft.data.dataset import ORIENTATIONS

FLIP_TRANSFORMS = {"HorizontalFlip": "h", "VerticalFlip": "v"}


def flip_probabilities(augment: Any) -> tuple[tuple[float, float] | None, str]:
    """(p horizontal, p vertical) of a flip-only pipeline, else (None, why not).

    Only flips can be served: each orientation of an image is cached. Any other
    geometric or colour transform changes the pixels in ways no cache holds.
    """
    if augment is None:
        return (0.0, 0.0), ""
    transforms = getattr(augment, "transforms", None)
    if type(augment).__name__ != "Compose" or transforms is None:
        return None, f"the augmentation {type(augment).__name__} is not a plain list of flips"
    if getattr(augment, "p", 1.0) < 1.0:
        return None, "the augmentation pipeline is applied with p < 1"
    probs = {"h": 0.0, "v": 0.0}
    others = []
    for transform in transforms:
        axis = FLIP_TRANSFORMS.get(type(transform).__name__)
        if axis is None:
            others.append(type(transform).__name__)
        else:
            probs[axis] = 1 - (1 - probs[axis]) * (1 - float(transform.p))
    if others:
        return None, (
            f"data.train_augment has {', '.join(others)}; the cache serves only "
            f"{' and '.join(FLIP_TRANSFORMS)} (each orientation is cached)"
        )
    return (probs["h"], probs["v"]), ""


def orientations_for(flip_probs: tuple[float, float]) -> list[str]:
    """The orientations a sample can show with these flip probabilities."""
    p_h, p_v = flip_probs
    return [o for o in ORIENTATIONS if ("h" not in o or p_h > 0) and ("v" not in o or p_v > 0)]


def why_not_cached(encoder_mode: str, augment: Any) -> str:
    """'' when training can read embeddings from a cache, else the reason it cannot."""
    if encoder_mode != "frozen":
        return (
            f"finetune.image_encoder = {encoder_mode}: the encoder is trained, so its "
            "embeddings change every step"
        )
    return flip_probabilities(augment)[1]

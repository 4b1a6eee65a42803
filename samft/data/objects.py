"""Which objects of an image may be prompted, and which K of them one sample uses.

Filtering runs on the reader's index (areas only, no pixels), so skipped objects and images
are known and counted before training starts. After augmentation the surviving masks are
checked again with `large_enough`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from samft.data.readers.base import ImageRecord, ObjectRecord

# Reasons an object or image is skipped, as reported by the dataset statistics.
SKIP_CROWD = "crowd"
SKIP_EMPTY = "empty_mask"
SKIP_SMALL = "below_min_area"
SKIP_LARGE = "above_max_area_fraction"
SKIP_IMAGE = "image_without_objects"


def skip_reason(
    obj: ObjectRecord, image_area: int, min_area: float, max_area_fraction: float
) -> str | None:
    """Why `obj` cannot be a training object, or None when it can.

    The SAM paper drops masks covering more than 90% of the image (`max_area_fraction=0.9`):
    they are mostly background and teach nothing about boundaries.
    """
    if obj.iscrowd:
        return SKIP_CROWD
    if obj.area <= 0:
        return SKIP_EMPTY
    if obj.area < min_area:
        return SKIP_SMALL
    if obj.area > max_area_fraction * image_area:
        return SKIP_LARGE
    return None


def usable_objects(
    record: ImageRecord, min_area: float, max_area_fraction: float, skipped: Counter | None = None
) -> list[int]:
    """Indices of the objects of `record` that pass the filters; counts the rest in `skipped`."""
    image_area = record.height * record.width
    keep = []
    for i, obj in enumerate(record.objects):
        reason = skip_reason(obj, image_area, min_area, max_area_fraction)
        if reason is None:
            keep.append(i)
        elif skipped is not None:
            skipped[reason] += 1
    return keep


def choose_objects(
    candidates: Sequence[int], max_objects: int | None, rng: np.random.Generator
) -> list[int]:
    """At most `max_objects` of `candidates`, drawn without replacement, in index order.

    Drawn anew for every sample, so over the epochs every object is seen while one image
    encoder pass still serves up to K prompts.
    """
    candidates = list(candidates)
    if max_objects is None or len(candidates) <= max_objects:
        return candidates
    picked = rng.choice(len(candidates), size=max_objects, replace=False)
    return [candidates[i] for i in sorted(picked.tolist())]


def large_enough(masks: np.ndarray, min_area: float) -> np.ndarray:
    """N bool: which of the N x H x W masks still have at least `min_area` (and > 0) pixels."""
    areas = masks.reshape(masks.shape[0], -1).sum(axis=1)
    return (areas > 0) & (areas >= min_area)

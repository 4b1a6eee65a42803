"""Dataset statistics from the index: what will be trained on and what was skipped and why.

Everything is computed from the readers' index (areas, counts, sizes), so it is cheap and
needs no pixel decoding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from samft.data.dataset import SamDataset
from samft.data.objects import SKIP_CROWD, SKIP_EMPTY, SKIP_IMAGE, SKIP_LARGE, SKIP_SMALL

# COCO's object size buckets, in original pixels.
SMALL_AREA = 32**2
LARGE_AREA = 96**2


def _summary(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"min": 0.0, "max": 0.0, "mean": 0.0, "median": 0.0}
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
    }


def dataset_statistics(dataset: SamDataset) -> dict[str, Any]:
    """Counts and distributions of one dataset, as a JSON-ready dict.

    Areas are in original image pixels. `skipped` counts objects per reason (crowd, empty
    mask, below min_area, above max_area_fraction) and images left without any object.
    """
    records = dataset.reader.records
    used = [(dataset.reader.records[r], objects) for r, objects in dataset.items]
    areas = np.array([rec.objects[i].area for rec, objs in used for i in objs], dtype=np.float64)
    fractions = np.array(
        [rec.objects[i].area / (rec.height * rec.width) for rec, objs in used for i in objs]
    )
    per_image = np.array([len(objs) for _, objs in used], dtype=np.float64)
    per_sample = np.minimum(per_image, dataset.max_objects) if dataset.max_objects else per_image
    categories = {rec.objects[i].category_id for rec, objs in used for i in objs} - {-1}
    heights = np.array([rec.height for rec in records], dtype=np.float64)
    widths = np.array([rec.width for rec in records], dtype=np.float64)
    reasons = (SKIP_CROWD, SKIP_EMPTY, SKIP_SMALL, SKIP_LARGE, SKIP_IMAGE)
    return {
        "format": dataset.reader.format,
        "images": len(records),
        "images_used": len(dataset),
        "objects": sum(len(rec.objects) for rec in records),
        "objects_used": int(areas.size),
        "objects_per_image": _summary(per_image),
        "objects_per_sample": _summary(per_sample),
        "object_area": _summary(areas),
        "object_area_fraction": _summary(fractions),
        "object_sizes": {
            "small": int((areas < SMALL_AREA).sum()),
            "medium": int(((areas >= SMALL_AREA) & (areas < LARGE_AREA)).sum()),
            "large": int((areas >= LARGE_AREA).sum()),
        },
        "image_height": _summary(heights),
        "image_width": _summary(widths),
        "categories": len(categories),
        "skipped": {reason: int(dataset.skipped.get(reason, 0)) for reason in reasons},
        "settings": {
            "image_size": dataset.image_size,
            "min_area": dataset.min_area,
            "max_area_fraction": dataset.max_area_fraction,
            "max_objects_per_image": dataset.max_objects,
        },
    }

"""Generator records as masks: one record's mask, its COCO RLE, and all records of an image
painted into one label image (what `segment` writes and what instance metrics score)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

from samft.infer.rle import masks_to_coco, rle_to_coco, rles_to_masks


def records_to_labels(
    records: Sequence[Mapping[str, Any]],
    shape: Sequence[int],
    min_object_size: int = 0,
    with_background: bool = False,
    split_components: bool = False,
) -> np.ndarray:
    """Paint generator records (`output_mode="binary_mask"`) into an `H x W` uint32 label image.

    micro-sam's rule (`mask_data_to_segmentation`): masks by decreasing area, each painted
    over the larger ones before it, so a small mask inside a large one (a nucleus inside a
    mask of its whole cluster) stays visible; masks with `area < min_object_size` are
    skipped; with
    `split_components` every painted label is split into its 4-connected pieces; pieces
    smaller than `min_object_size` are cleared, and with `with_background` so is the largest
    label (often a mask that covers the background). Labels are then renumbered 1..N.
    """
    labels = np.zeros(tuple(int(v) for v in shape[:2]), dtype=np.uint32)
    order = sorted(range(len(records)), key=lambda i: records[i]["area"], reverse=True)
    next_id = 1
    for i in order:
        if records[i]["area"] < min_object_size:
            continue
        labels[segmentation_mask(records[i]["segmentation"])] = next_id
        next_id += 1
    if split_components:
        pieces, next_id = np.zeros_like(labels), 1
        for label, box in enumerate(ndimage.find_objects(labels), 1):
            if box is not None:
                parts, count = ndimage.label(labels[box] == label)
                pieces[box][parts > 0] = parts[parts > 0] + (next_id - 1)
                next_id += count
        labels = pieces
    ids, sizes = np.unique(labels, return_counts=True)
    drop = ids[sizes < min_object_size]
    if with_background:
        drop = np.append(drop, ids[np.argmax(sizes)])
    labels[np.isin(labels, drop)] = 0
    kept = np.unique(labels)
    kept = kept[kept != 0]
    lookup = np.zeros(next_id, dtype=np.uint32)
    lookup[kept] = np.arange(1, kept.size + 1, dtype=np.uint32)
    return lookup[labels]


def segmentation_mask(segmentation: Any) -> np.ndarray:
    """Any generator segmentation (bool mask, uncompressed or COCO RLE) -> `H x W` bool."""
    if isinstance(segmentation, Mapping):
        if isinstance(segmentation["counts"], list):
            return rles_to_masks([segmentation])[0]
        rle = {"size": list(segmentation["size"]), "counts": segmentation["counts"]}
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("utf-8")
        with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword notice
            warnings.simplefilter("ignore", DeprecationWarning)
            return mask_utils.decode(rle).astype(bool)
    return np.asarray(segmentation, dtype=bool)


def coco_segmentation(segmentation: Any) -> dict[str, Any]:
    """Any generator segmentation (bool mask, uncompressed or COCO RLE) -> COCO RLE."""
    if isinstance(segmentation, Mapping):
        if isinstance(segmentation["counts"], list):
            return rle_to_coco([segmentation])[0]
        return dict(segmentation)
    return masks_to_coco(np.asarray(segmentation, dtype=bool)[None])[0]

"""COCO-style segmentations (polygons, uncompressed and compressed RLE) through pycocotools."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from samft.data.errors import DataError


def to_rle(segmentation: Any, height: int, width: int, where: str) -> dict:
    """Turn any COCO segmentation into one compressed RLE of an H x W image.

    `where` names the file and annotation for error messages.
    """
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if len(polygons) != len(segmentation):
            raise DataError(f"{where}: a polygon has fewer than 3 points (6 numbers)")
        if not polygons:
            return mask_utils.encode(np.zeros((height, width, 1), dtype=np.uint8, order="F"))[0]
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise DataError(
                f"{where}: segmentation size {size} (HxW) differs from the image size "
                f"{[height, width]}"
            )
        if isinstance(segmentation["counts"], list):
            return mask_utils.frPyObjects(segmentation, height, width)
        return {"size": size, "counts": segmentation["counts"]}
    raise DataError(
        f"{where}: segmentation must be a list of polygons or an RLE dict with 'size' and "
        f"'counts', got {type(segmentation).__name__}"
    )


def rle_area(rle: dict) -> int:
    """Pixel count of a compressed RLE without decoding it."""
    return int(mask_utils.area(rle))


def decode_rles(rles: list[dict], height: int, width: int) -> np.ndarray:
    """Decode compressed RLEs to N x H x W bool masks."""
    if not rles:
        return np.zeros((0, height, width), dtype=bool)
    with warnings.catch_warnings():
        # pycocotools' Cython code trips numpy 2's `copy` deprecation on every call; harmless
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        decoded = mask_utils.decode(rles)  # H x W x N, Fortran order
    return np.ascontiguousarray(decoded.transpose(2, 0, 1)).astype(bool)

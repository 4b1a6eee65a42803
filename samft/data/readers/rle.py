"""COCO-style segmentations (polygons, uncompressed and compressed RLE) through pycocotools.

pycocotools trusts its input: counts that do not add up to H*W decode to uninitialised
memory (a silent partial mask) or "Invalid RLE mask representation" naming nothing, and a
count that is not a non-negative integer corrupts its heap. `to_rle` therefore reads the
counts itself first (`rle_counts.py`, no mask decoded) and checks that they cover the image
exactly; the same pass gives the object's area. Readers summarise all the counts strings of
a file in one call (`counts_strings`, `summarize_counts`) and hand each to `to_rle`.
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import numpy as np
from pycocotools import mask as mask_utils

from samft.data.errors import DataError
from samft.data.readers.rle_counts import Summary, summarize_counts
from samft.data.readers.validate import as_int, check_polygons


def _list_counts(counts: list, where: str) -> list[int]:
    """Uncompressed RLE counts, checked to be non-negative integers."""
    runs = [as_int(v) for v in counts]
    bad = next((k for k, v in enumerate(runs) if v is None or v < 0), None)
    if bad is not None:
        raise DataError(
            f"{where}: RLE counts[{bad}] is {counts[bad]!r}; counts must be non-negative "
            "integers (the run lengths); re-export this annotation"
        )
    return cast(list[int], runs)


def _check_size(size: Any, height: int, width: int, where: str) -> None:
    values = [as_int(v) for v in size] if isinstance(size, list) else []
    if len(values) != 2 or None in values:
        raise DataError(f"{where}: segmentation 'size' is {size!r}; expected [height, width]")
    if values != [height, width]:
        raise DataError(
            f"{where}: segmentation size {values} (HxW) differs from the image size "
            f"{[height, width]}"
        )


def counts_strings(annotations: list) -> list[str | None]:
    """The compressed RLE counts string of each annotation, None where it has none."""
    out: list[str | None] = []
    for ann in annotations:
        segmentation = ann.get("segmentation") if isinstance(ann, dict) else None
        counts = segmentation.get("counts") if isinstance(segmentation, dict) else None
        out.append(counts if isinstance(counts, str) else None)
    return out


def to_rle(
    segmentation: Any, height: int, width: int, where: str, summary: Summary | None = None
) -> tuple[dict, int]:
    """Turn any COCO segmentation into one compressed RLE of an H x W image and its area.

    `where` names the file and annotation for error messages. Polygons are checked by
    `validate.check_polygons`; RLE counts must be valid and add up to exactly H * W.
    `summary`: the counts string's `summarize_counts` result when already computed.
    """
    if isinstance(segmentation, list):
        polygons = check_polygons(segmentation, height, width, where)
        if not polygons:
            empty = {"size": [height, width], "counts": [height * width]}
            return mask_utils.frPyObjects(empty, height, width), 0
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        return rle, int(mask_utils.area(rle))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        _check_size(segmentation["size"], height, width, where)
        counts = segmentation["counts"]
        if isinstance(counts, list):
            runs = _list_counts(counts, where)
            summary = (sum(runs), sum(runs[1::2]))
        elif isinstance(counts, str):
            summary = summary or summarize_counts([counts])[0]
        else:
            raise DataError(
                f"{where}: RLE counts must be a string or a list of integers, got "
                f"{type(counts).__name__}"
            )
        if summary is None:
            raise DataError(
                f"{where}: RLE counts string is corrupt (not pycocotools' compressed "
                "encoding); re-export this annotation"
            )
        total, area = summary
        if total != height * width:
            raise DataError(
                f"{where}: RLE counts cover {total} pixels but the image has {height}x{width} "
                f"= {height * width}: the RLE is truncated or corrupt; re-export this annotation"
            )
        if isinstance(counts, list):  # validated ints, not the JSON values
            uncompressed = {"size": [height, width], "counts": runs}
            return mask_utils.frPyObjects(uncompressed, height, width), area
        return {"size": [height, width], "counts": counts}, area
    raise DataError(
        f"{where}: segmentation must be a list of polygons or an RLE dict with 'size' and "
        f"'counts', got {type(segmentation).__name__}"
    )


def decode_rles(rles: list[dict], height: int, width: int, where: str = "") -> np.ndarray:
    """Decode compressed RLEs (checked by `to_rle`) to N x H x W bool masks.

    A run that passed the checks but is still out of range (e.g. negative) makes pycocotools
    refuse the RLE; the DataError then names `where` (file and image).
    """
    if not rles:
        return np.zeros((0, height, width), dtype=bool)
    with warnings.catch_warnings():
        # pycocotools' Cython code trips numpy 2's `copy` deprecation on every call; harmless
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        try:
            decoded = mask_utils.decode(rles)  # H x W x N, Fortran order
        except ValueError as exc:
            raise DataError(f"{where}: cannot decode an RLE ({exc}); re-export it") from exc
    return np.ascontiguousarray(decoded.transpose(2, 0, 1)).astype(bool)

"""Checks on annotation JSON values before they reach pycocotools or numpy.

pycocotools allocates memory in proportion to a polygon's perimeter and to H*W, so one
coordinate of 1e9 or a height of 1e9 makes it allocate until the kernel kills the process.
Everything it would receive is checked here first, in cheap Python/numpy over the JSON (no
mask is decoded); a bad value raises a DataError naming the file, the annotation and what
to do. RLE counts are checked in `rle.py`, next to their decoding.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from samft.data.errors import DataError
from samft.data.readers.base import require

MAX_SIDE = 100_000  # pixels a side; larger images are tiled before annotation
MAX_PIXELS = 2**31  # pycocotools counts pixels in 32-bit integers

# Polygon and box coordinates may lie slightly outside the image (COCO has points at
# x = width + 1); pycocotools clips them. Farther out means another coordinate system.
MARGIN_PX = 8
MARGIN_FRACTION = 0.05
# pycocotools walks every polygon edge at 5x resolution: cap the total perimeter so that
# an honest outline always passes (1000 crossings of the image) and memory stays bounded.
MAX_PERIMETER_CROSSINGS = 1000
MAX_PERIMETER = 10_000_000


def as_int(value: Any) -> int | None:
    """`value` as an int when it is an integer (or an integral float), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def margin(side: int) -> float:
    """How far (pixels) a coordinate may lie outside an image side of this length."""
    return max(MARGIN_PX, MARGIN_FRACTION * side)


def check_image_size(info: Any, where: str) -> tuple[int, int]:
    """(height, width) of an image entry: positive integers, not absurdly large."""
    sides = []
    for key in ("height", "width"):
        value = require(info, key, where)
        side = as_int(value)
        if side is None or not 0 < side <= MAX_SIDE:
            raise DataError(
                f"{where}: {key} is {value!r}; expected a positive integer up to {MAX_SIDE} "
                "(pixels); fix the image entry"
            )
        sides.append(side)
    height, width = sides
    if height * width > MAX_PIXELS:
        raise DataError(
            f"{where}: {height}x{width} (HxW) is more than {MAX_PIXELS} pixels, too large for "
            "pycocotools; tile the image"
        )
    return height, width


def check_id(value: Any, what: str, where: str) -> int | str:
    """An image/annotation id: an integer or a string (JSON keys that index other entries)."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise DataError(f"{where}: {what} is {value!r}; expected an integer (or a string)")


def check_polygons(segmentation: list, height: int, width: int, where: str) -> list[list]:
    """COCO polygons `[[x1, y1, x2, y2, ...], ...]` that are safe to give pycocotools.

    Each needs an even number of at least 6 finite coordinates within the image plus a
    margin (`margin`), and their total perimeter is bounded. Plain Python over the lists
    (a few microseconds a polygon); the slow search for the culprit runs only on failure.
    """
    mx, my = margin(width), margin(height)
    bound = 0.0  # points x largest extent: an upper bound of the perimeter
    for j, polygon in enumerate(segmentation):
        if not isinstance(polygon, list):
            hint = " (a flat list: wrap it as [[x1, y1, ...]])" if j == 0 else ""
            raise DataError(
                f"{where}: polygon {j} is {type(polygon).__name__}; COCO polygons are a list "
                f"of lists [[x1, y1, x2, y2, ...]]{hint}"
            )
        if len(polygon) < 6 or len(polygon) % 2:
            raise DataError(
                f"{where}: polygon {j} has {len(polygon)} coordinates; a polygon needs an even "
                "number of them, at least 6 (3 points); fix or drop it"
            )
        xs, ys = polygon[0::2], polygon[1::2]
        try:  # NaN and inf propagate through the sum; None and strings raise
            x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
            ok = math.isfinite(sum(polygon)) and x0 >= -mx and y0 >= -my
            ok = ok and x1 <= width + mx and y1 <= height + my
        except TypeError:
            ok = False
        if not ok:
            _explain(polygon, j, height, width, where)
        bound += len(xs) * max(x1 - x0, y1 - y0)
    limit = min(MAX_PERIMETER_CROSSINGS * (height + width), MAX_PERIMETER)
    if bound > limit:
        perimeter = 0.0
        for polygon in segmentation:
            xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
            perimeter += float(np.abs(xy - np.roll(xy, 1, axis=0)).max(axis=1).sum())
        if perimeter > limit:
            raise DataError(
                f"{where}: the polygons' outline is {perimeter:.0f} px long (limit {limit}); "
                "rasterising it would take too much memory; simplify or drop this annotation"
            )
    return segmentation


def _explain(polygon: list, j: int, height: int, width: int, where: str) -> None:
    """Raise the DataError for the first bad coordinate of a polygon that failed the check."""
    for k, v in enumerate(polygon):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise DataError(
                f"{where}: polygon {j} coordinate {k} is {v!r}; coordinates must be finite "
                "numbers (pixels); fix or drop this annotation"
            )
    mx, my = margin(width), margin(height)
    for x, y in zip(polygon[0::2], polygon[1::2], strict=True):
        if not (-mx <= x <= width + mx and -my <= y <= height + my):
            raise DataError(
                f"{where}: polygon {j} has point ({x:g}, {y:g}), outside the {width}x{height} "
                f"(WxH) image by more than {max(mx, my):g} px: the coordinates are not pixels "
                "of this image (another resolution? normalised?); fix or drop it"
            )
    raise DataError(f"{where}: polygon {j} is invalid: {polygon!r:.200}")


def check_bbox(bbox: Any, height: int, width: int, where: str) -> None:
    """A `bbox` [x, y, w, h] must be 4 finite numbers, w, h >= 0, inside the image (with
    margin). The readers do not use it, but a malformed one marks a corrupt annotation."""
    mx, my = margin(width), margin(height)
    try:  # NaN fails every comparison, inf the upper bounds; None and strings raise
        x, y, w, h = bbox if isinstance(bbox, list) else ()
        ok = w >= 0 and h >= 0 and x >= -mx and y >= -my
        ok = ok and x + w <= width + mx and y + h <= height + my
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise DataError(
            f"{where}: bbox {bbox!r} is not [x, y, width, height] of finite, non-negative "
            f"numbers inside the {width}x{height} (WxH) image; fix it or delete the key "
            "(masks come from 'segmentation')"
        )


def check_area(declared: Any, measured: int, where: str) -> None:
    """An RLE annotation's `area` must be its RLE's pixel count (COCO and SA-1B write it
    exactly; 1 px of slack for rounding). A truncated or garbled RLE shows up here."""
    ok = isinstance(declared, (int, float)) and not isinstance(declared, bool)
    if ok and abs(declared - measured) <= 1.0:
        return
    raise DataError(
        f"{where}: 'area' is {declared!r} but the RLE covers {measured} pixels: the counts (or "
        "the area) are corrupt; re-export this annotation"
    )

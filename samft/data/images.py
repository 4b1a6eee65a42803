"""Read image files as RGB uint8 and label/mask files as integer maps.

Every reader goes through these two functions so that grayscale, palette, RGBA and 16-bit
files are converted the same way everywhere, and a missing or broken file is reported by
name. EXIF orientation is deliberately NOT applied: COCO and SA-1B annotations are drawn
on the stored pixel grid, so rotating the pixels would move them off their masks.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from samft.data.errors import DataError

# PIL modes that hold one high-bit-depth or float channel; they are rescaled to 0..255.
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# PIL refuses images over twice its MAX_IMAGE_PIXELS (a guard against decompression bombs)
PIL_DEFAULT_LIMIT = 2 * 89_478_485


def allow_image_pixels(limit: int | None) -> None:
    """Let every image reader open images of up to `limit` pixels (None: PIL's default
    guard, about 179 megapixels). The `max_image_pixels=N` key of every command."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"max_image_pixels={limit!r}: must be a whole number >= 1, or null")
    Image.MAX_IMAGE_PIXELS = (limit or PIL_DEFAULT_LIMIT) // 2
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the error is the limit


class ImageTooLargeError(DataError):
    """An image over the pixel limit (`max_image_pixels`)."""


def too_large(path: Path, what: str, err: Exception) -> ImageTooLargeError:
    """The error for an image over the pixel limit: the file, its size and the key."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    pixels = int(found.group(1)) if found else None
    limit = 2 * int(Image.MAX_IMAGE_PIXELS or 0)
    return ImageTooLargeError(
        f"{what} file {path} has {_pixels(pixels) if pixels else 'too many pixels'}, over the "
        f"limit of {_pixels(limit)} (a guard against decompression bombs); if the file is "
        f"genuine, allow it with max_image_pixels={pixels or 2 * limit}"
    )


def _pixels(count: int) -> str:
    return f"{count / 1e6:.1f} megapixels" if count >= 1_000_000 else f"{count} pixels"


def open_image(path: Path, what: str = "image", decode: bool = False) -> Image.Image:
    """`Image.open(path)`, the header only or (`decode`) the pixels too; every failure a
    DataError naming the file (`ImageTooLargeError` over the pixel limit)."""
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    try:
        image = Image.open(path)
        if decode:
            image.load()
    except Image.DecompressionBombError as exc:
        raise too_large(path, what, exc) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read {what} file {path}: {exc}") from exc
    return image


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Min-max scale one channel of any depth to 0..255 (a constant image becomes 0)."""
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image as H x W x 3 uint8 RGB.

    Grayscale and palette images are expanded to three channels, the alpha channel of
    RGBA/LA images is dropped, and 16-bit or float images are min-max stretched per image
    to 0..255 (16-bit medical scans rarely use the full range, so dividing by 257 would
    leave them almost black).
    """
    path = Path(path)
    image = open_image(path, "image", decode=True)
    if image.mode in _WIDE_MODES:
        gray = _stretch_to_uint8(np.asarray(image))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def read_label_map(path: str | Path) -> np.ndarray:
    """Read a mask or label PNG/TIFF as an H x W integer map (values are ids, not colours).

    Palette images give their palette indices (VOC style). RGB(A) label images are read as
    id = R + 256 * G + 256^2 * B, the COCO panoptic convention. 16-bit maps keep their values.
    JPEG files are refused whatever their name: compression changes the values at edges.
    Float TIFF maps must hold whole numbers.
    """
    path = Path(path)
    image = open_image(path, "mask", decode=True)
    if image.format in ("JPEG", "MPO"):
        raise DataError(
            f"mask file {path} is a JPEG: lossy compression changes label values at object "
            "edges, so the masks cannot be trusted; save masks as PNG or TIFF"
        )
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8)
    if image.mode in ("RGB", "RGBA"):
        rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
        return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    if image.mode == "LA":
        image = image.convert("L")
    values = np.asarray(image)
    if values.ndim != 2:
        raise DataError(f"mask file {path} has mode {image.mode}; expected a one-channel map")
    if values.dtype.kind == "f" and not (np.isfinite(values) & (values == np.round(values))).all():
        raise DataError(
            f"mask file {path} holds fractional or non-finite values; a label map needs whole "
            "numbers (ids or classes)"
        )
    return values.astype(np.int64)


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image file, read from its header only."""
    with open_image(Path(path)) as image:
        width, height = image.size
    return height, width


def input_image_size(path: Path, input_path: str | Path) -> tuple[int, int]:
    """(H, W) of the image `path` found under `input=`, or a DataError naming the file."""
    try:
        with open_image(path) as image:
            width, height = image.size
    except ImageTooLargeError:
        raise
    except DataError:
        raise DataError(
            f"input={input_path}: {path} is not an image samft can read; expected PNG, JPEG, "
            "TIFF, BMP or WebP"
        ) from None
    return height, width

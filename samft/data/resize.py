"""Resize an image and its masks into the model's input frame.

SAM's families: the longest side becomes the input size S, through the family's filter
(PIL's bilinear resize, exactly what the official `ResizeLongestSide.apply_image` does at
inference, or LiteMedSAM's area filter), so training sees the pixels that prediction will
see. The model pads and normalises afterwards, once.

SAM 2 (`interpolation == "bilinear_antialias"`): the image goes to the S x S square, its
aspect ratio not kept, as Meta's predictor resizes it; masks go to the same square, so
prompts drawn from them are in SAM 2's input frame and nothing is padded.
"""

from __future__ import annotations

import cv2
import numpy as np

from samft.model.transforms import frame_shape, input_shape, resize_uint8

__all__ = ["input_shape", "resize_image", "resize_masks"]


def resize_image(image: np.ndarray, image_size: int, interpolation: str = "bilinear") -> np.ndarray:
    """H x W x 3 uint8 -> h x w x 3 uint8 in the input frame, with the model family's
    filter (`resize_interpolation`: PIL bilinear for SAM, OpenCV area for LiteMedSAM,
    antialiased bilinear to the S x S square for SAM 2)."""
    h, w = frame_shape(image.shape[0], image.shape[1], image_size, interpolation)
    if (h, w) == image.shape[:2]:
        return image
    return resize_uint8(image, h, w, interpolation)


def resize_masks(masks: np.ndarray, image_size: int, interpolation: str = "bilinear") -> np.ndarray:
    """N x H x W bool -> N x h x w bool in the input frame of the family resizing images
    with `interpolation` (long side S, or SAM 2's S x S square).

    Masks are resampled as fractions (area averaging when shrinking, bilinear when
    enlarging) and thresholded at one half. A mask that this empties (a few pixels shrunk
    a lot) keeps every pixel it touches instead, so no object disappears here.
    """
    n, height, width = masks.shape
    h, w = frame_shape(height, width, image_size, interpolation)
    if (h, w) == (height, width):
        return masks.copy()
    out = np.empty((n, h, w), dtype=bool)
    for i in range(n):
        fraction = _resize_fraction(masks[i].astype(np.float32), h, w)
        out[i] = fraction >= 0.5
        if not out[i].any() and masks[i].any():
            out[i] = fraction > 0
    return out


def _resize_fraction(fraction: np.ndarray, h: int, w: int) -> np.ndarray:
    """H x W float32 -> h x w: area averaging when shrinking, bilinear when enlarging.
    SAM 2's square may shrink one axis and enlarge the other: then one pass per axis."""
    height, width = fraction.shape
    if (h - height) * (w - width) >= 0:  # both the same way (always so for long side S)
        method = cv2.INTER_AREA if h < height else cv2.INTER_LINEAR
        return cv2.resize(fraction, (w, h), interpolation=method)
    method_h = cv2.INTER_AREA if h < height else cv2.INTER_LINEAR
    method_w = cv2.INTER_AREA if w < width else cv2.INTER_LINEAR
    fraction = cv2.resize(fraction, (width, h), interpolation=method_h)
    return cv2.resize(fraction, (w, h), interpolation=method_w)

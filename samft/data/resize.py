"""Resize an image and its masks so the longest side equals the model's input size.

The image goes through PIL's bilinear resize, exactly what the official
`ResizeLongestSide.apply_image` does at inference, so training sees the pixels that
prediction will see. The model pads and normalises afterwards, once.
"""

from __future__ import annotations

import cv2
import numpy as np

from samft.model.transforms import input_shape, resize_uint8


def resize_image(image: np.ndarray, image_size: int, interpolation: str = "bilinear") -> np.ndarray:
    """H x W x 3 uint8 -> h x w x 3 uint8 in the input frame, with the model family's
    filter (`Sam.resize_interpolation`: PIL bilinear for SAM, OpenCV area for LiteMedSAM)."""
    h, w = input_shape(image.shape[0], image.shape[1], image_size)
    if (h, w) == image.shape[:2]:
        return image
    return resize_uint8(image, h, w, interpolation)


def resize_masks(masks: np.ndarray, image_size: int) -> np.ndarray:
    """N x H x W bool -> N x h x w bool in the input frame.

    Masks are resampled as fractions (area averaging when shrinking, bilinear when
    enlarging) and thresholded at one half. A mask that this empties (a few pixels shrunk
    a lot) keeps every pixel it touches instead, so no object disappears here.
    """
    n, height, width = masks.shape
    h, w = input_shape(height, width, image_size)
    if (h, w) == (height, width):
        return masks.copy()
    method = cv2.INTER_AREA if h < height else cv2.INTER_LINEAR
    out = np.empty((n, h, w), dtype=bool)
    for i in range(n):
        fraction = cv2.resize(masks[i].astype(np.float32), (w, h), interpolation=method)
        out[i] = fraction >= 0.5
        if not out[i].any() and masks[i].any():
            out[i] = fraction > 0
    return out

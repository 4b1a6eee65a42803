"""Colours shared by every picture samft draws (data samples, training predictions,
predict and segment overlays), so the same thing looks the same everywhere."""

from __future__ import annotations

import cv2
import numpy as np

POSITIVE_COLOUR = (40, 220, 40)  # positive points
NEGATIVE_COLOUR = (230, 30, 30)  # negative points


def palette(n: int) -> np.ndarray:
    """n x 3 int32: distinct bright RGB colours (hues spread by the golden ratio)."""
    hues = (np.arange(n) * 0.618034 % 1.0 * 179).astype(np.uint8)
    hsv = np.stack([hues, np.full(n, 200, np.uint8), np.full(n, 255, np.uint8)], axis=1)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0].astype(np.int32)

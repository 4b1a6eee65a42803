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


def write_note(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """A copy of `image` (H x W x 3 uint8 RGB) with `lines` of white text on a dark band
    across its top, sized to the image width."""
    out = image.copy()
    height, width = out.shape[:2]
    scale = max(0.3, min(1.0, width / 900))
    thickness = 1 if scale < 0.7 else 2
    step = int(26 * scale) + 6
    band = min(height, step * len(lines) + 6)
    out[:band] = (out[:band] * 0.25).astype(np.uint8)
    for row, text in enumerate(lines):
        y = 4 + step * (row + 1) - 6
        cv2.putText(out, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)  # fmt: skip
    return out

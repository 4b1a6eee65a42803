"""The segment overlay: an image with every instance of a label image tinted in its own
colour and outlined (original frame)."""

from __future__ import annotations

import numpy as np

from samft.io.drawing import palette


def draw_instances(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """H x W x 3 uint8: `image` with instance `i` of the `H x W` label image (0 background)
    tinted with `palette(n)[i - 1]` and its boundary pixels in that colour."""
    count = int(labels.max()) if labels.size else 0
    canvas = image.astype(np.float32)
    if count == 0:
        return image.copy()
    colours = np.zeros((count + 1, 3), np.float32)
    colours[1:] = palette(count)
    inside = labels > 0
    tint = colours[labels]
    canvas[inside] = (1 - alpha) * canvas[inside] + alpha * tint[inside]
    edge = np.zeros(labels.shape, dtype=bool)  # a pixel whose right or lower neighbour differs
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge &= inside
    canvas[edge] = tint[edge]
    return canvas.clip(0, 255).astype(np.uint8)

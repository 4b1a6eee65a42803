"""A picture of what the model will see: samples with their masks and prompts drawn on.

Each tile is one dataset sample (augmented for training), shrunk to `tile` pixels: masks
as coloured overlays with outlines, positive points green, negative points red, boxes in
the object's colour, and a caption with the image id and object count.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from samft.data.dataset import SamDataset
from samft.io.drawing import NEGATIVE_COLOUR, POSITIVE_COLOUR, palette
from samft.model.prompts import (
    LABEL_BOX_BOTTOM_RIGHT,
    LABEL_BOX_TOP_LEFT,
    LABEL_NEGATIVE,
    LABEL_POSITIVE,
)


def draw_sample(
    sample: dict,
    tile: int = 320,
    alpha: float = 0.45,
    outline: int = 1,
    caption: str | None = None,
) -> np.ndarray:
    """One `SamDataset` sample drawn as a tile x tile x 3 uint8 RGB picture: masks filled
    with opacity `alpha` and outlined `outline` pixels wide, prompts on top, `caption`
    (default: image id and object count) along the bottom."""
    image = sample["image"].permute(1, 2, 0).numpy()
    h, w = image.shape[:2]
    scale = tile / max(h, w)
    th, tw = max(int(round(h * scale)), 1), max(int(round(w * scale)), 1)
    canvas = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA).astype(np.float32)
    masks = sample["masks"].numpy()
    colours = palette(len(masks))
    outlines = []
    for mask, colour in zip(masks, colours, strict=True):
        small = cv2.resize(mask.astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST)
        canvas[small > 0] = (1 - alpha) * canvas[small > 0] + alpha * colour
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outlines.append(contours)
    canvas = canvas.clip(0, 255).astype(np.uint8)
    for contours, colour in zip(outlines, colours, strict=True):
        cv2.drawContours(canvas, contours, -1, tuple(int(c) for c in colour), outline)
    coords = sample["point_coords"].numpy() * scale
    labels = sample["point_labels"].numpy()
    for obj in range(len(labels)):
        colour = tuple(int(c) for c in colours[obj])
        corners = {int(lab): coords[obj, k] for k, lab in enumerate(labels[obj])}
        if LABEL_BOX_TOP_LEFT in corners and LABEL_BOX_BOTTOM_RIGHT in corners:
            x0, y0 = corners[LABEL_BOX_TOP_LEFT]
            x1, y1 = corners[LABEL_BOX_BOTTOM_RIGHT]
            cv2.rectangle(canvas, (int(x0), int(y0)), (int(x1), int(y1)), colour, 2)
        for (x, y), lab in zip(coords[obj], labels[obj], strict=True):
            if lab in (LABEL_POSITIVE, LABEL_NEGATIVE):
                fill = POSITIVE_COLOUR if lab == LABEL_POSITIVE else NEGATIVE_COLOUR
                cv2.circle(canvas, (int(x), int(y)), 4, fill, -1)
                cv2.circle(canvas, (int(x), int(y)), 4, (255, 255, 255), 1)
    out = np.zeros((tile, tile, 3), dtype=np.uint8)
    out[:th, :tw] = canvas
    if caption is None:
        caption = f"{sample['image_id']}  {len(masks)} obj"
    cv2.putText(out, caption, (4, tile - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    return out


def render_sample_grid(
    dataset: SamDataset,
    indices: Sequence[int] | None = None,
    num_samples: int = 8,
    columns: int = 4,
    tile: int = 320,
) -> np.ndarray:
    """A grid of drawn samples (the first `num_samples`, or `indices`) as H x W x 3 uint8."""
    if indices is None:
        indices = range(min(num_samples, len(dataset)))
    tiles = [draw_sample(dataset[i], tile) for i in indices]
    if not tiles:
        raise ValueError("render_sample_grid: no samples to draw")
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    gap = 4
    grid = np.full(
        (rows * tile + (rows - 1) * gap, columns * tile + (columns - 1) * gap, 3), 255, np.uint8
    )
    for k, picture in enumerate(tiles):
        r, c = divmod(k, columns)
        grid[
            r * (tile + gap) : r * (tile + gap) + tile, c * (tile + gap) : c * (tile + gap) + tile
        ] = picture
    return grid

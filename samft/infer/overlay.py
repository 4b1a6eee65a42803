"""The predict overlay: an image with each prompt's mask tinted and outlined, its points,
box and score drawn on it (original frame)."""

from __future__ import annotations

import cv2
import numpy as np

from samft.infer.prompts_file import PromptSpec
from samft.io.drawing import NEGATIVE_COLOUR, POSITIVE_COLOUR, palette


def draw_overlay(
    image: np.ndarray,
    masks: list[np.ndarray],
    prompts: list[PromptSpec],
    scores: list[float],
    alpha: float = 0.45,
) -> np.ndarray:
    """H x W x 3 uint8: `image` with each mask tinted and outlined, its prompt drawn
    (positive points green, negative red, the box in the mask's colour) and its score."""
    canvas = image.astype(np.float32)
    colours = [tuple(int(c) for c in colour) for colour in palette(len(masks))]
    for mask, colour in zip(masks, colours, strict=True):
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * np.asarray(colour, np.float32)
    canvas = canvas.clip(0, 255).astype(np.uint8)
    thickness = max(1, round(max(image.shape[:2]) / 400))
    for mask, colour, prompt, score in zip(masks, colours, prompts, scores, strict=True):
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(canvas, contours, -1, colour, thickness)
        anchor = (4, 16)
        if prompt.box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in prompt.box)
            cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, thickness + 1)
            anchor = (x0, max(y0 - 4, 12))
        if prompt.points is not None:
            for (x, y), label in zip(prompt.points, prompt.labels, strict=True):
                centre = (int(round(x)), int(round(y)))
                fill = POSITIVE_COLOUR if label == 1 else NEGATIVE_COLOUR
                cv2.circle(canvas, centre, 3 * thickness + 2, fill, -1)
                cv2.circle(canvas, centre, 3 * thickness + 2, (255, 255, 255), 1)
            if prompt.box is None:
                anchor = (int(prompt.points[0][0]) + 8, int(prompt.points[0][1]) - 8)
        text = f"{prompt.name} {score:.2f}"
        cv2.putText(canvas, text, anchor, cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3)
        cv2.putText(canvas, text, anchor, cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1)
    return canvas

"""Training points for the automatic (prompt-free) mode, and the instances that answer them.

The automatic generator prompts a dense grid of single points and keeps the masks its IoU
head scores high, so the head must also be right for points that land on an object's
border, between objects or on the background: points a person never clicks. A sample can
carry such points, drawn uniformly over the image, together with the masks of *every*
instance of the image, so the training module can score each answer against the instance
it matches best (`samft.train.automatic_targets`).
"""

from __future__ import annotations

import numpy as np

from samft.data.readers.base import ImageRecord


def instance_indices(record: ImageRecord) -> list[int]:
    """Indices of the objects of `record` that count as instances: every non-crowd object
    with pixels, whatever its size (a tiny nucleus is still a right answer)."""
    return [i for i, obj in enumerate(record.objects) if not obj.iscrowd and obj.area > 0]


def sample_image_points(
    height: int, width: int, count: int, rng: np.random.Generator
) -> np.ndarray:
    """`count` x 2 float32 points (x, y), uniform over the `height` x `width` image in the
    input frame (pixel indices, as prompts are everywhere in samft)."""
    if count < 0:
        raise ValueError(f"count = {count}; expected >= 0")
    x = rng.uniform(0.0, width, size=count)
    y = rng.uniform(0.0, height, size=count)
    points = np.stack([x, y], axis=1).astype(np.float32)
    return np.minimum(points, np.array([width - 1, height - 1], dtype=np.float32))

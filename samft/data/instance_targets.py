"""Per-pixel targets of the instance head, from an instance id map.

The head predicts three maps for prompt-free instance segmentation, as micro-sam's trained
instance decoder ("AIS", after torch_em's per-object distance transform) does:

- `foreground`: 1 on every object pixel, 0 on the background.
- `center_distance`: on an object, the distance of the pixel to the object's centre divided
  by the largest such distance in the object: 0 at the centre, 1 at its farthest pixel.
- `boundary_distance`: on an object, how far the pixel lies from the object's ridge, the
  pixels farthest from its border: `(r_max - r) / (r_max - 1)` with `r` the Euclidean
  distance to the nearest pixel outside the object (a neighbour, the background or the
  image edge) and `r_max` its largest value in the object. 0 on the ridge, 1 on the object's
  outermost pixels whatever its size (objects at most 2 px thick: 0 everywhere).

Both distances are 0 on the background, where the loss ignores them. Each object is
normalised on its own, so a small nucleus and a large one give the same range, and two
touching objects meet where both boundary distances are 1: the seeded watershed
(`samft.infer.instance_watershed`) splits them there.

The centre is the object's centroid, or the object pixel nearest to it when the centroid
falls outside the object (a bent or ring-shaped object), so the centre is always on it.

Computed in the input frame after augmentation, from the augmented, resized masks, so the
targets always match the pixels the model sees.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

INSTANCE_MAPS = ("foreground", "center_distance", "boundary_distance")
FOREGROUND, CENTER_DISTANCE, BOUNDARY_DISTANCE = range(3)


def paint_instances(masks: np.ndarray) -> np.ndarray:
    """`N x H x W` bool masks -> `H x W` int32 id map (ids 1..N in mask order); where masks
    overlap (after a resize), the smaller one is painted over the larger one, so no object
    loses its pixels to a neighbour that engulfs it."""
    labels = np.zeros(masks.shape[1:], dtype=np.int32)
    areas = masks.sum(axis=(1, 2))
    for index in np.argsort(-areas, kind="stable"):
        labels[masks[index]] = index + 1
    return labels


def object_center(crop: np.ndarray) -> tuple[float, float]:
    """(row, col) of the centre of the object `crop` (`h x w` bool): its centroid when the
    pixel there is on the object, else the object pixel nearest to the centroid."""
    rows, cols = np.nonzero(crop)
    center = (float(rows.mean()), float(cols.mean()))
    if crop[round(center[0]), round(center[1])]:
        return center
    nearest = int(np.argmin((rows - center[0]) ** 2 + (cols - center[1]) ** 2))
    return float(rows[nearest]), float(cols[nearest])


def instance_targets(labels: np.ndarray) -> np.ndarray:
    """`H x W` instance ids (0 background, any other value one object) -> `3 x H x W`
    float32 maps in `INSTANCE_MAPS` order (see the module docstring)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"instance_targets: expected an H x W id map, got shape {labels.shape}")
    targets = np.zeros((3, *labels.shape), dtype=np.float32)
    ids, dense = np.unique(labels, return_inverse=True)
    dense = dense.reshape(labels.shape)
    if ids[0] != 0:
        dense = dense + 1  # no background pixel: ids 1..N all the same
    for index, box in enumerate(ndi.find_objects(dense), 1):
        if box is None:
            continue
        crop = dense[box] == index
        # distance to the nearest pixel off the object; the padding makes the image edge one
        radius = ndi.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]
        r_max = float(radius.max())
        boundary = (r_max - radius) / (r_max - 1) if r_max > 1 else np.zeros_like(radius)
        center = object_center(crop)
        grid_r, grid_c = np.indices(crop.shape, dtype=np.float64)
        distance = np.hypot(grid_r - center[0], grid_c - center[1])
        far = float(distance[crop].max())
        center_map = distance / far if far > 0 else np.zeros_like(distance)
        for channel, values in (
            (FOREGROUND, np.ones_like(radius)),
            (CENTER_DISTANCE, center_map),
            (BOUNDARY_DISTANCE, boundary),
        ):
            targets[channel][box][crop] = values[crop]
    return targets

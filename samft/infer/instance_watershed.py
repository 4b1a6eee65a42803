"""Instances from the instance head's maps: a seeded watershed (scipy only).

The maps are those of `samft.data.instance_targets` (foreground probability, normalised
distance to the object's centre, normalised distance from its ridge towards its border),
as the head predicts them after a sigmoid. As in micro-sam's post-processing of its
instance decoder:

1. Foreground: pixels whose foreground probability is above `foreground_thresh`.
2. Seeds: foreground pixels near an object's centre (`center_distance < center_thresh`)
   and deep inside it (`boundary_distance < boundary_thresh`); each 4-connected group of
   seed pixels is one object. A foreground region that holds no seed becomes one object
   itself, so no foreground is lost.
3. Flooding: every seed grows over the foreground in increasing boundary distance (a
   priority flood, Meyer's watershed: the unlabelled foreground pixel next to a labelled
   one with the lowest boundary distance is labelled next, ties first come first served);
   two touching objects meet on the ridge of high boundary distance between them. Flooding
   never enters the background, so a hole in an object stays a hole.
4. Objects smaller than `min_size` pixels are dropped; the rest are numbered 1..N in
   raster order of their first pixel.
"""

from __future__ import annotations

import heapq

import numpy as np
from scipy import ndimage as ndi

FOUR_CONNECTED = ndi.generate_binary_structure(2, 1)


def seeded_watershed(
    foreground: np.ndarray,
    center_distance: np.ndarray,
    boundary_distance: np.ndarray,
    foreground_thresh: float = 0.5,
    center_thresh: float = 0.5,
    boundary_thresh: float = 0.5,
    min_size: int = 0,
) -> np.ndarray:
    """`H x W` maps in [0, 1] -> `H x W` int32 instance ids (0 background, 1..N).

    Args:
        foreground: probability that a pixel is on an object.
        center_distance: 0 at an object's centre, 1 at its farthest pixel.
        boundary_distance: 0 on an object's ridge, 1 on its border.
        foreground_thresh: a pixel is foreground when its probability is above this.
        center_thresh, boundary_thresh: a foreground pixel seeds an object when both its
            distances are below these.
        min_size: objects with fewer pixels are dropped (0: keep all).
    """
    shape = np.shape(foreground)
    if np.shape(center_distance) != shape or np.shape(boundary_distance) != shape:
        raise ValueError(
            f"seeded_watershed: maps of shapes {shape}, {np.shape(center_distance)}, "
            f"{np.shape(boundary_distance)}; expected three H x W maps of one size"
        )
    fg = np.asarray(foreground) > foreground_thresh
    if not fg.any():
        return np.zeros(shape, dtype=np.int32)
    seeds = fg & (np.asarray(center_distance) < center_thresh)
    seeds &= np.asarray(boundary_distance) < boundary_thresh
    markers, count = ndi.label(seeds, FOUR_CONNECTED)
    regions, _ = ndi.label(fg, FOUR_CONNECTED)
    unseeded = np.setdiff1d(np.unique(regions[fg]), np.unique(regions[seeds]))
    if unseeded.size:  # a foreground region with no seed is one object
        extra = np.isin(regions, unseeded)
        markers[extra] = count + np.searchsorted(unseeded, regions[extra]) + 1
    labels = flood(markers, fg, np.asarray(boundary_distance, dtype=np.float64))
    return relabel(labels, min_size)


def flood(markers: np.ndarray, mask: np.ndarray, height: np.ndarray) -> np.ndarray:
    """Grow the `H x W` int `markers` (0: unlabelled) over the pixels of `mask` in
    increasing `height`, 4-connected: Meyer's priority flood. Each pixel takes the label of
    the neighbour that reaches it first; pixels off `mask` stay 0. A seed is flooded from
    at once, so a one-pixel object takes the pixel of a neighbour that it touches.

    Written with `heapq` over the mask's pixels (scipy's `watershed_ift` weighs the height
    *differences* between neighbours, so two objects whose border pixels share a height
    would flow into each other; scikit-image is not a dependency).
    """
    rows, cols = markers.shape
    width = cols + 2  # a one-pixel frame of -1 around the image: no bounds checks
    labels = np.full((rows + 2, width), -1, dtype=np.int64)
    labels[1:-1, 1:-1] = np.where(mask, markers, -1)
    heights = np.zeros((rows + 2, width), dtype=np.float64)
    heights[1:-1, 1:-1] = height
    flat_labels, flat_heights = labels.ravel(), heights.ravel()
    steps = (-width, -1, 1, width)
    seeded = np.flatnonzero(flat_labels > 0)
    queue = [(flat_heights[i], order, i) for order, i in enumerate(seeded.tolist())]
    heapq.heapify(queue)
    pushed = len(queue)
    while queue:
        _, _, index = heapq.heappop(queue)
        label = flat_labels[index]
        for step in steps:
            neighbour = index + step
            if flat_labels[neighbour] == 0:
                flat_labels[neighbour] = label
                heapq.heappush(queue, (flat_heights[neighbour], pushed, neighbour))
                pushed += 1
    out = labels[1:-1, 1:-1]
    return np.where(out > 0, out, 0)


def relabel(labels: np.ndarray, min_size: int = 0) -> np.ndarray:
    """Ids 1..N in raster order of each object's first pixel; objects with fewer than
    `min_size` pixels become background."""
    flat = labels.ravel()
    ids, first, sizes = np.unique(flat, return_index=True, return_counts=True)
    keep = (ids != 0) & (sizes >= max(min_size, 1))
    order = np.argsort(first[keep], kind="stable")
    lookup = np.zeros(int(ids.max(initial=0)) + 1, dtype=np.int32)
    lookup[ids[keep][order]] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lookup[labels]

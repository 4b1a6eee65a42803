"""Geometry and scoring for automatic mask generation: grids, crops, boxes, NMS, stability.

Frames and conventions (the same as the official automatic mask generator, so that results
compare one to one):

- Point grids are `P x 2` float64 (x, y) in [0, 1], relative to a crop.
- Boxes are `... x 4` (x0, y0, x1, y1). Crop boxes use exclusive ends (x1 = x0 + width); boxes
  *around masks* use the inclusive index of the last pixel, and an empty mask gets
  (0, 0, 0, 0). Box areas for NMS are `(x1 - x0) * (y1 - y0)` on those numbers, as
  torchvision computes them.
- Masks are `K x h x w` (bool, or float logits for the stability score), in a crop frame or
  in the original image frame after `uncrop_masks`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


# ----------------------------------------------------------------------------- point grids
def point_grid(n_per_side: int) -> np.ndarray:
    """`n^2 x 2` float64 (x, y): the centres of an n x n tiling of the unit square, x fastest."""
    half_step = 1.0 / (2 * n_per_side)
    centres = np.linspace(half_step, 1.0 - half_step, n_per_side)
    xs, ys = np.meshgrid(centres, centres, indexing="xy")
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def layer_point_grids(n_per_side: int, n_layers: int, downscale: int) -> list[np.ndarray]:
    """One grid per crop layer 0..n_layers; layer i has `int(n / downscale**i)` points a side."""
    sides = [int(n_per_side / downscale**layer) for layer in range(n_layers + 1)]
    if min(sides) < 1:
        raise ValueError(
            f"points_per_side={n_per_side} with downscale factor {downscale} leaves no points "
            f"in crop layer {sides.index(min(sides))}"
        )
    return [point_grid(side) for side in sides]


# ----------------------------------------------------------------------------- crops
def crop_boxes(
    image_size: Sequence[int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes `[x0, y0, x1, y1]` (exclusive ends) and the layer of each.

    Layer 0 is the whole image. Layer i >= 1 tiles the image with 2^i x 2^i crops that
    overlap by `int(overlap_ratio * short_side * 2 / 2^i)` pixels; crops are listed
    column by column (x0 outer, y0 inner) and clipped to the image.
    """
    height, width = int(image_size[0]), int(image_size[1])
    boxes, layers = [[0, 0, width, height]], [0]
    short_side = min(height, width)
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = int(math.ceil((overlap * (per_side - 1) + width) / per_side))
        crop_h = int(math.ceil((overlap * (per_side - 1) + height) / per_side))
        for i in range(per_side):
            x0 = int((crop_w - overlap) * i)
            for j in range(per_side):
                y0 = int((crop_h - overlap) * j)
                boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
                layers.append(layer)
    return boxes, layers


def uncrop_boxes(boxes: Tensor, crop_box: Sequence[int]) -> Tensor:
    """`... x 4` boxes in a crop frame -> the original frame (shift by the crop's corner)."""
    x0, y0 = int(crop_box[0]), int(crop_box[1])
    return boxes + torch.tensor([x0, y0, x0, y0], device=boxes.device)


def uncrop_points(points: Tensor, crop_box: Sequence[int]) -> Tensor:
    """`... x 2` (x, y) points in a crop frame -> the original frame."""
    return points + torch.tensor([int(crop_box[0]), int(crop_box[1])], device=points.device)


def uncrop_masks(masks: Tensor, crop_box: Sequence[int], height: int, width: int) -> Tensor:
    """`K x h x w` masks of a crop -> `K x H x W`, zero outside the crop."""
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    if (x0, y0, x1, y1) == (0, 0, width, height):
        return masks
    return F.pad(masks, (x0, width - x1, y0, height - y1), value=0)


def near_crop_edge(
    boxes: Tensor, crop_box: Sequence[int], image_box: Sequence[int], atol: float = 20.0
) -> Tensor:
    """`K` bool: boxes (crop frame) within `atol` px of a crop edge that is not an image edge.

    Each of the 4 box coordinates is compared with the same coordinate of the crop box and of
    the image box (both `[x0, y0, x1, y1]`), after moving the box to the original frame.
    """
    moved = uncrop_boxes(boxes, crop_box).float()
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    image = torch.as_tensor(image_box, dtype=torch.float, device=boxes.device)
    at_crop = (moved - crop).abs() <= atol
    at_image = (moved - image).abs() <= atol
    return (at_crop & ~at_image).any(dim=-1)


# ----------------------------------------------------------------------------- masks
def mask_boxes(masks: Tensor) -> Tensor:
    """`... x h x w` bool -> `... x 4` int64 (x0, y0, x1, y1), inclusive; (0, 0, 0, 0) if empty."""
    h, w = masks.shape[-2:]
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, dtype=torch.long, device=masks.device)
    rows = masks.any(dim=-1).to(torch.uint8)  # ... x h
    cols = masks.any(dim=-2).to(torch.uint8)  # ... x w
    top = rows.argmax(dim=-1)
    bottom = (h - 1) - rows.flip(-1).argmax(dim=-1)
    left = cols.argmax(dim=-1)
    right = (w - 1) - cols.flip(-1).argmax(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    return boxes * rows.any(dim=-1, keepdim=True)


def stability_score(logits: Tensor, mask_threshold: float, offset: float) -> Tensor:
    """`... x h x w` logits -> `...` float32: IoU of the masks cut at threshold +- offset.

    The mask cut higher lies inside the one cut lower, so the IoU is the ratio of their
    pixel counts (NaN when both are empty).
    """
    inner = (logits > mask_threshold + offset).sum(dim=(-2, -1), dtype=torch.int32)
    outer = (logits > mask_threshold - offset).sum(dim=(-2, -1), dtype=torch.int32)
    return inner / outer


def remove_small_regions(mask: np.ndarray, min_area: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill small holes (`mode="holes"`) or drop small islands (`"islands"`) of an `H x W` mask.

    Regions are 8-connected components (of the background for holes, the foreground for
    islands) with fewer than `min_area` pixels; every background component counts as a hole,
    border ones included. If every island is small, the largest one stays. Returns the mask
    and whether it changed.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    fill_holes = mode == "holes"
    work = (~mask if fill_holes else mask).astype(np.uint8)
    n_labels, labels, stats, _ = cv2.connectedComponentsWithStats(work, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = np.flatnonzero(sizes < min_area) + 1  # component labels (0 is the rest)
    if small.size == 0:
        return mask, False
    if fill_holes:
        return np.isin(labels, np.concatenate([[0], small])), True
    big = np.setdiff1d(np.arange(1, n_labels), small)
    if big.size == 0:
        big = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(labels, big), True


# ----------------------------------------------------------------------------- NMS
def box_iou_above(boxes: Tensor, others: Tensor, threshold: float) -> Tensor:
    """`N x 4`, `M x 4` float boxes -> `N x M` bool: box IoU strictly above `threshold`.

    float32 arithmetic as torchvision's NMS; pairs of empty boxes (0/0) never count.
    """
    boxes, others = boxes.float(), others.float()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    other_area = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    lo = torch.maximum(boxes[:, None, :2], others[None, :, :2])
    hi = torch.minimum(boxes[:, None, 2:], others[None, :, 2:])
    size = (hi - lo).clamp(min=0)
    inter = size[..., 0] * size[..., 1]
    return inter / (area[:, None] + other_area[None, :] - inter) > threshold


def batched_nms(
    boxes: Tensor,
    scores: Tensor,
    categories: Tensor | None,
    iou_threshold: float,
    block: int = 1024,
) -> Tensor:
    """Greedy non-maximum suppression, the semantics of torchvision's `batched_nms`.

    Args:
        boxes: `N x 4` (x0, y0, x1, y1).
        scores: `N`; higher is kept first, ties in input order (a stable sort).
        categories: `N` ints or None; boxes only suppress boxes of their own category.
        iou_threshold: a box is dropped when its IoU with a kept, higher-scored box is
            strictly greater than this.
        block: boxes decided at a time; memory is `block x (block + kept)` booleans.

    Returns:
        int64 `K` indices of the kept boxes, by decreasing score.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order]
    labels = categories[order] if categories is not None else None
    kept: list[int] = []  # positions in score order
    for start in range(0, boxes.shape[0], block):
        part = slice(start, start + block)
        alive = np.ones(boxes[part].shape[0], dtype=bool)
        if kept:
            index = torch.as_tensor(kept, device=boxes.device)
            hits = _overlapping(boxes[part], boxes[index], labels, part, index, iou_threshold)
            alive &= ~hits.any(dim=1).cpu().numpy()
        inner = _overlapping(boxes[part], boxes[part], labels, part, part, iou_threshold)
        inner = inner.cpu().numpy()
        for i in range(alive.shape[0]):
            if alive[i]:
                kept.append(start + i)
                alive &= ~inner[i]
    return order[torch.as_tensor(kept, dtype=torch.long, device=order.device)]


def _overlapping(
    boxes: Tensor,
    others: Tensor,
    labels: Tensor | None,
    rows: slice | Tensor,
    cols: slice | Tensor,
    threshold: float,
) -> Tensor:
    """`box_iou_above`, restricted to pairs of the same category when there are categories."""
    hits = box_iou_above(boxes, others, threshold)
    if labels is not None:
        hits &= labels[rows][:, None] == labels[cols][None, :]
    return hits

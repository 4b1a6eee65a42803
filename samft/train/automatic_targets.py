"""What the automatic mode should learn from a point anywhere on the image.

The automatic generator keeps a mask when the IoU head scores it high, and the mask counts
as right when it matches *some* instance of the image, whichever one the grid point fell
in. So the head's target for an answer to such a point is its IoU with the instance it
matches best (0 on the background), and the mask target is the instance under the point,
when there is one. All tensors are in the input frame (masks S x S, zero on the padding).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _same_image(image_index: Tensor, instance_image_index: Tensor) -> Tensor:
    """P x N bool: whether instance n is on prompt p's image."""
    return image_index[:, None] == instance_image_index[None, :]


def containing_instance(
    points: Tensor, image_index: Tensor, instance_masks: Tensor, instance_image_index: Tensor
) -> Tensor:
    """P long: the smallest instance of each point's own image that covers the point's pixel,
    or -1 where none does (the background).

    Args:
        points: P x 2 (x, y) pixel indices in the input frame; the prompt encoder reads a
            point at the centre of pixel round(x), round(y).
        image_index: P long, each point's image.
        instance_masks: N x S x S bool.
        instance_image_index: N long, each instance's image.
    """
    size_h, size_w = instance_masks.shape[-2:]
    pixel = torch.floor(points + 0.5).long()
    cols = pixel[:, 0].clamp(0, size_w - 1)
    rows = pixel[:, 1].clamp(0, size_h - 1)
    hits = instance_masks[:, rows, cols].T & _same_image(image_index, instance_image_index)
    areas = instance_masks.flatten(1).sum(1).float()  # N
    cost = torch.where(hits, areas[None, :], torch.full_like(hits, float("inf"), dtype=torch.float))
    smallest = cost.argmin(dim=1) if hits.shape[1] else torch.zeros_like(image_index)
    return torch.where(hits.any(dim=1), smallest, torch.full_like(smallest, -1))


def best_instance_iou(
    pred_masks: Tensor,
    image_index: Tensor,
    instance_masks: Tensor,
    instance_image_index: Tensor,
    valid: Tensor | None = None,
) -> Tensor:
    """P x M: IoU of each predicted mask with the instance of its own image it overlaps
    best (0 when the image has none, or the mask misses them all).

    Args:
        pred_masks: P x M x S x S bool, the thresholded answers.
        image_index: P long, each prompt's image.
        instance_masks: N x S x S bool.
        instance_image_index: N long.
        valid: P x S x S bool, False on the padding (ignored there); None: all pixels.
    """
    if valid is not None:
        pred_masks = pred_masks & valid[:, None]
    num_prompts, num_masks = pred_masks.shape[:2]
    if instance_masks.shape[0] == 0:
        return pred_masks.new_zeros((num_prompts, num_masks), dtype=torch.float)
    pred = pred_masks.flatten(2).float()  # P x M x HW
    inst = instance_masks.flatten(1).float()  # N x HW
    inter = pred @ inst.T  # P x M x N
    union = pred.sum(-1, keepdim=True) + inst.sum(-1)[None, None, :] - inter
    iou = inter / union.clamp(min=1)
    same = _same_image(image_index, instance_image_index)[:, None, :]
    return iou.masked_fill(~same, 0.0).amax(dim=-1)

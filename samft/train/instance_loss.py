"""The instance head's loss: dice on each of its three maps, as micro-sam trains its
instance decoder (torch_em's `DiceBasedDistanceLoss`), plus binary cross-entropy on the
foreground.

- Dice: `1 - (2 sum(p t) + 1) / (sum(p^2) + sum(t^2) + 1)` with p the sigmoid of the
  logits. With squared sums in the denominator the loss is 0 exactly when p = t (Cauchy-
  Schwarz), so it also fits the continuous distance maps, not only the binary foreground.
- The two distance maps are scored on the objects only: prediction and target are both
  multiplied by the target foreground, so the head is free on the background, where the
  watershed never reads them.
- Cross-entropy on the foreground (`bce_weight`, 0 for micro-sam's loss alone) gives every
  pixel a gradient of its own, which dice, a ratio over the image, does not; nnU-Net pairs
  the two the same way.

Each image's loss is summed and divided by `num_images`, which the caller may sum across
DDP ranks (as `SamLoss` divides by objects). Padding (`valid` False) never counts.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor

from samft.data.instance_targets import BOUNDARY_DISTANCE, CENTER_DISTANCE, FOREGROUND


class InstanceLoss(NamedTuple):
    """Scalars: the weighted total and its parts, each a sum over images / `num_images`."""

    total: Tensor
    foreground: Tensor  # dice + bce_weight x cross-entropy
    center: Tensor
    boundary: Tensor


def soft_dice(prob: Tensor, target: Tensor) -> Tensor:
    """B: `1 - (2 sum(p t) + 1) / (sum(p^2) + sum(t^2) + 1)` over each image's pixels
    (`prob`, `target` B x H x W, already zero where they must not count)."""
    inter = (prob * target).flatten(1).sum(1)
    squares = (prob * prob).flatten(1).sum(1) + (target * target).flatten(1).sum(1)
    return 1 - (2 * inter + 1) / (squares + 1)


def instance_head_loss(
    logits: Tensor,
    targets: Tensor,
    valid: Tensor,
    num_images: float,
    bce_weight: float = 1.0,
    distance_weight: float = 1.0,
) -> InstanceLoss:
    """Loss of the head's maps against `samft.data.instance_targets` targets.

    Args:
        logits: B x 3 x H x W, the head's output (`INSTANCE_MAPS` order).
        targets: B x 3 x H x W in [0, 1], same order.
        valid: B x H x W bool, True on image pixels (False on the padding).
        num_images: the divisor (images summed over ranks / world size).
        bce_weight: weight of the foreground cross-entropy beside its dice.
        distance_weight: weight of each distance map's dice.
    """
    if logits.shape != targets.shape or logits.dim() != 4 or logits.shape[1] != 3:
        raise ValueError(
            f"instance_head_loss: logits {tuple(logits.shape)} and targets "
            f"{tuple(targets.shape)} must both be B x 3 x H x W"
        )
    if valid.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"instance_head_loss: valid {tuple(valid.shape)} must be B x H x W")
    weight = valid.to(logits.dtype)
    targets = targets.to(logits.dtype)
    prob = logits.sigmoid() * weight[:, None]
    fg_target = targets[:, FOREGROUND] * weight
    foreground = soft_dice(prob[:, FOREGROUND], fg_target)
    if bce_weight:
        bce = F.binary_cross_entropy_with_logits(logits[:, FOREGROUND], fg_target, reduction="none")
        per_image = (bce * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1)
        foreground = foreground + bce_weight * per_image
    center, boundary = (
        soft_dice(prob[:, channel] * fg_target, targets[:, channel] * fg_target)
        for channel in (CENTER_DISTANCE, BOUNDARY_DISTANCE)
    )
    parts = [part.sum() / num_images for part in (foreground, center, boundary)]
    total = parts[0] + distance_weight * (parts[1] + parts[2])
    return InstanceLoss(total, *parts)

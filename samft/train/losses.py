"""The SAM paper's training loss: focal + dice on masks, MSE on the IoU head; and SAM 2's:
the IoU head by L1, plus a binary cross-entropy on the object-score logit.

All per-mask losses take mask logits `P x M x H x W` (P objects, M candidate masks each)
and one ground-truth mask per object `P x H x W`, at the same resolution (the model's input
frame after `postprocess_masks`). `valid` marks the real image pixels; padding added to make
the input square is `False` there and never contributes to any loss or IoU.

Losses are averaged over objects: each object's loss is summed and the sum divided by
`num_objects`, which the caller may sum across DDP ranks so that every object weighs the
same whatever rank it landed on.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _prepare(
    logits: Tensor, targets: Tensor, valid: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Broadcast targets and valid (`P x H x W`) against logits (`P x M x H x W`) as floats."""
    if logits.dim() != 4:
        raise ValueError(f"mask logits must be P x M x H x W, got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"targets must be P x H x W = {tuple(logits.shape[:1] + logits.shape[2:])} "
            f"to match the logits, got shape {tuple(targets.shape)}"
        )
    target = targets.to(logits.dtype).unsqueeze(1)  # P x 1 x H x W
    if valid is None:
        weight = torch.ones_like(target)
    else:
        if valid.shape != targets.shape:
            raise ValueError(
                f"valid must have the targets' shape {tuple(targets.shape)}, "
                f"got {tuple(valid.shape)}"
            )
        weight = valid.to(logits.dtype).unsqueeze(1)
    return logits, target, weight


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    valid: Tensor | None = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:
    """Focal loss of each mask, the mean over its valid pixels.

    Focal loss down-weights pixels the model already gets right, so the few hard pixels
    near the boundary dominate. `alpha` weighs foreground pixels (1 - alpha background);
    a negative `alpha` turns that weighting off.

    Args:
        logits: P x M x H x W mask logits.
        targets: P x H x W ground truth (bool or 0/1 float).
        valid: P x H x W bool, True on real image pixels; None means all pixels count.

    Returns:
        P x M loss per mask (0 for an object with no valid pixel).
    """
    logits, target, weight = _prepare(logits, targets, valid)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    num_valid = weight.flatten(2).sum(-1).clamp(min=1)  # P x 1
    return (loss * weight).flatten(2).sum(-1) / num_valid


def dice_loss(logits: Tensor, targets: Tensor, valid: Tensor | None = None) -> Tensor:
    """Soft dice loss of each mask over its valid pixels, with smoothing 1.

    `1 - (2 * sum(p * t) + 1) / (sum(p) + sum(t) + 1)` with p the sigmoid probabilities;
    the smoothing keeps it finite and 0 for an empty target predicted empty.

    Args:
        logits: P x M x H x W mask logits.
        targets: P x H x W ground truth (bool or 0/1 float).
        valid: P x H x W bool, True on real image pixels; None means all pixels count.

    Returns:
        P x M loss per mask.
    """
    logits, target, weight = _prepare(logits, targets, valid)
    prob = logits.sigmoid() * weight
    target = target * weight
    numerator = 2 * (prob * target).flatten(2).sum(-1)
    denominator = prob.flatten(2).sum(-1) + target.flatten(2).sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


@torch.no_grad()
def mask_iou(logits: Tensor, targets: Tensor, valid: Tensor | None = None) -> Tensor:
    """Hard IoU of each mask (`logits > 0`) with its object's ground truth, over valid pixels.

    An empty union (nothing predicted, nothing to find) counts as a perfect IoU of 1.

    Args:
        logits: P x M x H x W mask logits.
        targets: P x H x W ground truth (bool or 0/1 float).
        valid: P x H x W bool, True on real image pixels; None means all pixels count.

    Returns:
        P x M IoU in [0, 1], float, without gradient.
    """
    _prepare(logits, targets, valid)
    target = targets.bool().unsqueeze(1)
    pred = logits > 0
    if valid is not None:
        keep = valid.bool().unsqueeze(1)
        pred = pred & keep
        target = target & keep
    inter = (pred & target).flatten(2).sum(-1)
    union = (pred | target).flatten(2).sum(-1)
    iou = inter.float() / union.clamp(min=1).float()
    return torch.where(union == 0, torch.ones_like(iou), iou)


class LossOutput(NamedTuple):
    """What `SamLoss` returns; every loss is a scalar already divided by `num_objects`."""

    total: Tensor  # weighted sum of the three losses below, the one to backpropagate
    focal: Tensor  # unweighted focal loss of the chosen masks
    dice: Tensor  # unweighted dice loss of the chosen masks
    iou: Tensor  # unweighted MSE (or L1) of the IoU head
    best_index: Tensor  # P, long: the mask chosen for each object
    best_iou: Tensor  # P: true IoU of the chosen mask
    object_score: Tensor | None = None  # unweighted object-score BCE; None without scores

    def parts(self) -> dict[str, Tensor]:
        """The logged losses: total, focal, dice, iou, and object_score when there is one."""
        parts = {"total": self.total, "focal": self.focal, "dice": self.dice, "iou": self.iou}
        if self.object_score is not None:
            parts["object_score"] = self.object_score
        return parts


IOU_LOSSES = ("mse", "l1")


class SamLoss(nn.Module):
    """Focal + dice on the best of the M masks, plus MSE (or L1) between IoU head and true
    IoU, plus (SAM 2) a binary cross-entropy on the object-score logit.

    With multimask output (M > 1) only the mask with the lowest weighted focal + dice loss is
    backpropagated for each object, so the other masks stay free to cover other plausible
    objects. The IoU head is trained towards the detached true IoU of each mask: of all M
    masks (their mean, the default, `supervise_all_iou=True`) so it learns to rank them, or
    only of the chosen mask (`supervise_all_iou=False`).

    Args:
        focal_weight: weight of the focal loss (20 in the paper).
        dice_weight: weight of the dice loss (1 in the paper).
        iou_weight: weight of the IoU MSE (1 in the paper).
        alpha: focal loss foreground weight.
        gamma: focal loss focusing exponent.
        supervise_all_iou: MSE over all masks (True) or only the chosen one (False).
        iou_loss: "mse" (the SAM paper) or "l1" (SAM 2's training).
        object_score_weight: weight of the object-score BCE (SAM 2 trains with 1; SAM has
            no object score). The target is 1 where the object's ground truth has a valid
            pixel, else 0 (an automatic-mode point on the background).
    """

    def __init__(
        self,
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
        supervise_all_iou: bool = True,
        iou_loss: str = "mse",
        object_score_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if iou_loss not in IOU_LOSSES:
            raise ValueError(f"iou_loss must be one of {list(IOU_LOSSES)}, got {iou_loss!r}")
        self.iou_loss = iou_loss
        self.object_score_weight = object_score_weight
        self.focal_weight = focal_weight
        self.dice_weight = dice_weight
        self.iou_weight = iou_weight
        self.alpha = alpha
        self.gamma = gamma
        self.supervise_all_iou = supervise_all_iou

    def forward(
        self,
        mask_logits: Tensor,
        iou_predictions: Tensor,
        gt_masks: Tensor,
        valid: Tensor | None = None,
        num_objects: float | Tensor | None = None,
        answering: Tensor | None = None,
        iou_targets: Tensor | None = None,
        mask_weights: Tensor | None = None,
        object_scores: Tensor | None = None,
    ) -> LossOutput:
        """Compute the loss of P objects.

        Args:
            mask_logits: P x M x H x W postprocessed mask logits, input frame.
            iou_predictions: P x M output of the IoU head.
            gt_masks: P x H x W ground-truth masks, same frame and size.
            valid: P x H x W bool, False on padding; None means no padding.
            num_objects: the divisor (objects summed over all ranks); None means P.
                Clamped to at least 1 so an empty batch gives zero loss, not NaN.
            answering: P x M bool, the masks each object may be trained on (None: all). SAM
                answers an ambiguous single point with its 3 multimask outputs and any other
                prompt with its single-mask output; with all 4 outputs decoded at once, this
                says which apply to each object. The best mask and the IoU MSE use only these.
            iou_targets: P x M targets of the IoU head instead of each mask's IoU with
                `gt_masks` (automatic-mode points: the IoU with the best-matching instance).
            mask_weights: P, scales each object's focal and dice loss (0: train the IoU head
                only, for a point with no object under it); None: 1 for all.
            object_scores: P x 1 object-score logits (SAM 2), or None: no object-score loss.
        """
        if iou_predictions.shape != mask_logits.shape[:2]:
            raise ValueError(
                f"iou_predictions must be P x M = {tuple(mask_logits.shape[:2])}, "
                f"got shape {tuple(iou_predictions.shape)}"
            )
        num_masks = mask_logits.shape[1]
        focal = sigmoid_focal_loss(mask_logits, gt_masks, valid, self.alpha, self.gamma)
        dice = dice_loss(mask_logits, gt_masks, valid)
        true_iou = mask_iou(mask_logits, gt_masks, valid)  # P x M, no gradient
        if iou_targets is not None:
            if iou_targets.shape != iou_predictions.shape:
                raise ValueError(
                    f"iou_targets must be P x M = {tuple(iou_predictions.shape)}, "
                    f"got shape {tuple(iou_targets.shape)}"
                )
            true_iou = iou_targets.detach()

        rows = torch.arange(mask_logits.shape[0], device=mask_logits.device)
        if answering is None:
            answering = torch.ones_like(iou_predictions, dtype=torch.bool)
        if num_masks > 1:
            combined = self.focal_weight * focal + self.dice_weight * dice
            best = combined.detach().masked_fill(~answering, float("inf")).argmin(dim=1)
        else:
            best = torch.zeros_like(rows)

        iou_error = iou_predictions - true_iou.to(iou_predictions.dtype)  # P x M
        iou_error = iou_error.abs() if self.iou_loss == "l1" else iou_error**2
        # all masks: the head learns to rank them; best only: it learns the chosen one's score
        if self.supervise_all_iou:
            weights = answering.to(iou_error.dtype)
            iou_per_object = (iou_error * weights).sum(1) / weights.sum(1).clamp(min=1)
        else:
            iou_per_object = iou_error[rows, best]

        if num_objects is None:
            num_objects = float(mask_logits.shape[0])
        divisor = torch.as_tensor(num_objects, dtype=focal.dtype, device=focal.device)
        divisor = divisor.clamp(min=1)
        focal_best, dice_best = focal[rows, best], dice[rows, best]
        if mask_weights is not None:
            weights = mask_weights.to(focal_best.dtype)
            focal_best, dice_best = focal_best * weights, dice_best * weights
        focal_sum = focal_best.sum() / divisor
        dice_sum = dice_best.sum() / divisor
        iou_sum = iou_per_object.sum() / divisor
        total = (
            self.focal_weight * focal_sum + self.dice_weight * dice_sum + self.iou_weight * iou_sum
        )
        object_sum = None
        if object_scores is not None:
            object_sum = object_score_loss(object_scores, gt_masks, valid).sum() / divisor
            total = total + self.object_score_weight * object_sum
        return LossOutput(
            total=total,
            focal=focal_sum,
            dice=dice_sum,
            iou=iou_sum,
            best_index=best,
            best_iou=true_iou[rows, best],
            object_score=object_sum,
        )


def object_score_loss(logits: Tensor, targets: Tensor, valid: Tensor | None = None) -> Tensor:
    """Binary cross-entropy of each object's object-score logit against "the object is in
    the image": 1 where its ground truth has a (valid) pixel, else 0.

    Args:
        logits: P x 1 object-score logits.
        targets: P x H x W ground truth (bool or 0/1 float).
        valid: P x H x W bool, True on real image pixels; None means all pixels count.

    Returns:
        P loss per object.
    """
    present = targets.bool()
    if valid is not None:
        present = present & valid.bool()
    target = present.flatten(1).any(dim=1).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")

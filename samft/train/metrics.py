"""Validation metrics for promptable segmentation: IoU and Dice per object, by bucket.

Every state is a sum or a count (`dist_reduce_fx="sum"`), so DDP ranks sync by adding them.
One vector of sums per quantity holds all buckets; `_bucket_names` says which slot is which.
"""

from __future__ import annotations

import torch
import torchmetrics
from torch import Tensor

from samft.model.prompts import PROMPT_TYPE_NAMES

# COCO's object size split, on the area in original-image pixels.
SMALL_AREA = 32**2
MEDIUM_AREA = 96**2
SIZE_NAMES = ("small", "medium", "large")


def _per_object_scores(
    pred_masks: Tensor, gt_masks: Tensor, valid: Tensor | None
) -> tuple[Tensor, Tensor]:
    """IoU and Dice (P each) of bool masks over valid pixels; both empty scores 1."""
    pred = pred_masks.bool()
    gt = gt_masks.bool()
    if valid is not None:
        keep = valid.bool()
        pred = pred & keep
        gt = gt & keep
    inter = (pred & gt).flatten(1).sum(-1).float()
    pred_area = pred.flatten(1).sum(-1).float()
    gt_area = gt.flatten(1).sum(-1).float()
    union = pred_area + gt_area - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
    total = pred_area + gt_area
    dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(inter))
    return iou, dice


class PromptedSegmentationMetrics(torchmetrics.Metric):
    """Mean IoU and Dice per object, split by prompt type, object size and click round.

    Buckets, each reported only once an object fell in it:
        `miou`, `dice`: every object at click round 0 (its first prompt).
        `miou/one_point`, `miou/points`, `miou/box` (and `dice/...`): round 0, by prompt type.
        `miou/small`, `miou/medium`, `miou/large` (and `dice/...`): round 0, by COCO size
            (area < 32^2, < 96^2, else; original-image pixels); only for updates that pass
            `object_areas`.
        `miou/click_<r>` (and `dice/click_<r>`): after r correction clicks, r = 1..max_click_round.
    Also `iou_head_mae`, the mean absolute error between the IoU head's prediction and the
    true IoU at round 0 (only for updates that pass `iou_predictions`), and `num_objects`,
    the number of round-0 objects.

    Args:
        max_click_round: the highest click round `update` accepts.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, max_click_round: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        if max_click_round < 0:
            raise ValueError(f"max_click_round must be >= 0, got {max_click_round}")
        self.max_click_round = max_click_round
        self._bucket_names = (
            ["all"]
            + [PROMPT_TYPE_NAMES[k] for k in sorted(PROMPT_TYPE_NAMES)]
            + list(SIZE_NAMES)
            + [f"click_{r}" for r in range(1, max_click_round + 1)]
        )
        self._prompt_offset = 1
        self._size_offset = 1 + len(PROMPT_TYPE_NAMES)
        self._click_offset = self._size_offset + len(SIZE_NAMES)
        num_buckets = len(self._bucket_names)
        for name in ("iou_sum", "dice_sum", "count"):
            self.add_state(
                name, default=torch.zeros(num_buckets, dtype=torch.float32), dist_reduce_fx="sum"
            )
        self.add_state(
            "iou_head_error_sum",
            default=torch.tensor(0.0, dtype=torch.float32),
            dist_reduce_fx="sum",
        )
        self.add_state(
            "iou_head_count", default=torch.tensor(0.0, dtype=torch.float32), dist_reduce_fx="sum"
        )

    def _add(self, buckets: Tensor, iou: Tensor, dice: Tensor) -> None:
        """Add each object's scores to its bucket (`buckets`, P long)."""
        self.iou_sum.index_add_(0, buckets, iou)
        self.dice_sum.index_add_(0, buckets, dice)
        self.count.index_add_(0, buckets, torch.ones_like(iou))

    def update(
        self,
        pred_masks: Tensor,
        gt_masks: Tensor,
        valid: Tensor | None = None,
        iou_predictions: Tensor | None = None,
        prompt_types: Tensor | None = None,
        click_round: int = 0,
        object_areas: Tensor | None = None,
    ) -> None:
        """Score P objects.

        Args:
            pred_masks: P x H x W bool, the chosen mask of each object.
            gt_masks: P x H x W bool, ground truth in the same frame.
            valid: P x H x W bool, False on padding; None means all pixels count.
            iou_predictions: P, the IoU head's score of the chosen mask.
            prompt_types: P long, keys of PROMPT_TYPE_NAMES; required at round 0.
            click_round: 0 for the first prompt, r after r correction clicks.
            object_areas: P, object areas in original-image pixels, for the size split.
        """
        if pred_masks.shape != gt_masks.shape or pred_masks.dim() != 3:
            raise ValueError(
                f"pred_masks and gt_masks must both be P x H x W, got "
                f"{tuple(pred_masks.shape)} and {tuple(gt_masks.shape)}"
            )
        if not 0 <= click_round <= self.max_click_round:
            raise ValueError(
                f"click_round must be in 0..{self.max_click_round} (max_click_round), "
                f"got {click_round}"
            )
        num_objects = pred_masks.shape[0]
        iou, dice = _per_object_scores(pred_masks, gt_masks, valid)
        device = self.count.device
        iou, dice = iou.to(device), dice.to(device)

        if click_round > 0:
            bucket = self._click_offset + click_round - 1
            self._add(torch.full((num_objects,), bucket, device=device), iou, dice)
            return

        if prompt_types is None or prompt_types.shape != (num_objects,):
            raise ValueError(
                f"prompt_types must be a P = {num_objects} tensor at click round 0, got "
                f"{None if prompt_types is None else tuple(prompt_types.shape)}"
            )
        prompt_types = prompt_types.to(device=device, dtype=torch.long)
        known = torch.tensor(sorted(PROMPT_TYPE_NAMES), device=device)
        if not torch.isin(prompt_types, known).all():
            raise ValueError(
                f"prompt_types must be keys of {PROMPT_TYPE_NAMES}, got "
                f"{sorted(set(prompt_types.tolist()))}"
            )
        self._add(torch.zeros(num_objects, dtype=torch.long, device=device), iou, dice)
        self._add(self._prompt_offset + prompt_types, iou, dice)

        if object_areas is not None:
            areas = object_areas.to(device).reshape(-1)
            size = (areas >= SMALL_AREA).long() + (areas >= MEDIUM_AREA).long()
            self._add(self._size_offset + size, iou, dice)

        if iou_predictions is not None:
            predicted = iou_predictions.detach().to(device=device, dtype=torch.float32)
            self.iou_head_error_sum += (predicted.reshape(-1) - iou).abs().sum()
            self.iou_head_count += num_objects

    def compute(self) -> dict[str, Tensor]:
        """Means per non-empty bucket, `iou_head_mae` and `num_objects` (float32 scalars)."""
        out: dict[str, Tensor] = {}
        for index, name in enumerate(self._bucket_names):
            count = self.count[index]
            if count == 0:
                continue
            suffix = "" if name == "all" else f"/{name}"
            out[f"miou{suffix}"] = self.iou_sum[index] / count
            out[f"dice{suffix}"] = self.dice_sum[index] / count
        if self.iou_head_count > 0:
            out["iou_head_mae"] = self.iou_head_error_sum / self.iou_head_count
        out["num_objects"] = self.count[0].clone()
        return out

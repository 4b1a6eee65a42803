"""Covered-mask suppression (`suppress_covered`, `select_masks(covered_thresh=)`) on masks
whose coverage is worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samft.infer.mask_candidates import MaskCandidates, select_masks, suppress_covered
from samft.infer.mask_ops import mask_boxes
from samft.infer.rle import masks_to_rle


def _candidates(masks: np.ndarray, scores: list[float]) -> MaskCandidates:
    """One crop (the whole image), thresholds 0: every mask is a candidate."""
    tensor = torch.as_tensor(masks)
    count, height, width = masks.shape
    return MaskCandidates(
        rles=masks_to_rle(tensor),
        boxes=mask_boxes(tensor),
        areas=tensor.sum(dim=(1, 2)),
        iou_preds=torch.tensor(scores, dtype=torch.float32),
        stability=torch.ones(count),
        points=torch.zeros(count, 2, dtype=torch.float64),
        crop_ids=torch.zeros(count, dtype=torch.long),
        crop_boxes=[[0, 0, width, height]],
        image_size=(height, width),
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )


@pytest.fixture
def nested() -> MaskCandidates:
    """A 4 x 5 block (20 px, score 0.9); its left 2 x 5 half (10 px, 0.8: all covered);
    a 4 x 4 block sharing one column of 4 px with the first (16 px, 0.7: 4/16 = 0.25
    covered); a 2 x 2 block over the first and the third (4 px, 0.6: all covered by the
    two together, half by each); an empty mask (0.95)."""
    masks = np.zeros((5, 10, 12), dtype=bool)
    masks[0, 1:5, 0:5] = True
    masks[1, 1:3, 0:5] = True
    masks[2, 1:5, 4:8] = True
    masks[3, 2:4, 3:5] = True
    return _candidates(masks, [0.9, 0.8, 0.7, 0.6, 0.95])


def _kept_scores(kept: MaskCandidates) -> list[float]:
    return [round(v, 2) for v in kept.iou_preds.tolist()]


@pytest.mark.parametrize(
    ("thresh", "expected"),
    [
        (0.5, [0.9, 0.7]),  # the half and the 2 x 2 block are fully covered, the third 25 %
        (0.25, [0.9, 0.7]),  # 0.25 is not more than 0.25: the third stays
        (0.2, [0.9]),  # now the third (25 % covered) goes too
        (1.0, [0.9, 0.8, 0.7, 0.6]),  # nothing is more than fully covered: only the empty goes
    ],
)
def test_masks_covered_by_better_ones_are_dropped(nested, thresh, expected):
    assert _kept_scores(suppress_covered(nested, thresh)) == expected


def test_coverage_counts_the_union_of_better_masks():
    """A mask half on each of two better masks is covered as a whole."""
    masks = np.zeros((3, 4, 8), dtype=bool)
    masks[0, :, 0:4] = True
    masks[1, :, 4:8] = True
    masks[2, 1:3, 2:6] = True  # 8 px: 4 on each
    kept = suppress_covered(_candidates(masks, [0.9, 0.8, 0.7]), 0.9)
    assert _kept_scores(kept) == [0.9, 0.8]


def test_select_masks_suppresses_after_nms_and_is_off_by_default(nested):
    """The half's box (IoU 0.5 with the block's) survives box NMS at 0.7; only the covered
    suppression removes it, and the default (1.0) keeps Meta's result."""
    meta = select_masks(nested, 0.0, 0.0, 0.7, 0.7)
    assert _kept_scores(meta) == [0.95, 0.9, 0.8, 0.7, 0.6]  # the empty mask too
    suppressed = select_masks(nested, 0.0, 0.0, 0.7, 0.7, covered_thresh=0.5)
    assert _kept_scores(suppressed) == [0.9, 0.7]
    np.testing.assert_array_equal(
        suppressed.boxes.numpy(), [[0, 1, 4, 4], [4, 1, 7, 4]]
    )  # inclusive x0, y0, x1, y1 of the block and the third


def test_bad_covered_thresh_is_refused(nested):
    with pytest.raises(ValueError, match="covered_thresh must be in"):
        suppress_covered(nested, 1.5)

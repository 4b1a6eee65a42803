"""Instance metrics (`samft.train.instance_metrics`, `.coco_ap`, `.threshold_search`) and records
as labels (`samft.infer.record_masks`) on small cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from samft.evaluate import coco_ap, threshold_search
from samft.infer import record_masks
from samft.infer.rle import masks_to_coco, masks_to_rle
from samft.train import instance_metrics as instance


def _labels(shape, **objects) -> np.ndarray:
    """A label image with rectangles: name=(id, y0, y1, x0, x1), ends exclusive."""
    image = np.zeros(shape, dtype=np.int32)
    for label, y0, y1, x0, x1 in objects.values():
        image[y0:y1, x0:x1] = label
    return image


# gt: a 2 x 2 object and a 2 x 3 object. pred: the first exactly, the second shifted right
# by one column (4 px shared, 8 px in the union: IoU exactly 0.5), and a 1-pixel extra.
GT = _labels((6, 6), a=(1, 0, 2, 0, 2), b=(2, 3, 5, 2, 5))
PRED = _labels((6, 6), a=(7, 0, 2, 0, 2), b=(3, 3, 5, 3, 6), c=(9, 5, 6, 0, 1))


def test_iou_matrix_by_hand():
    iou = instance.iou_matrix(PRED, GT)  # pred ids in increasing order: 3, 7, 9
    np.testing.assert_allclose(iou, [[0.0, 0.5], [1.0, 0.0], [0.0, 0.0]])
    stack = instance.instance_masks(PRED)
    np.testing.assert_allclose(instance.iou_matrix(stack, GT), iou)
    assert instance.iou_matrix(np.zeros((6, 6), int), GT).shape == (0, 2)


def test_scores_by_hand():
    scores = instance.instance_scores(PRED, GT)
    # t = 0.50: the IoU-0.5 pair counts (>=): TP 2, FP 1, FN 0 -> 2/3.
    # t >= 0.55: only the exact pair: TP 1, FP 2, FN 1 -> 1/4.
    assert scores["TP"] == [2] + [1] * 9
    assert scores["SA50"] == pytest.approx(2 / 3)
    assert scores["SA75"] == pytest.approx(1 / 4)
    assert scores["mSA"] == pytest.approx((2 / 3 + 9 / 4) / 10)
    assert scores["precision50"] == pytest.approx(2 / 3)
    assert scores["recall50"] == 1.0
    assert scores["f1_50"] == pytest.approx(0.8)
    assert (scores["n_pred"], scores["n_gt"]) == (3, 2)


def test_matching_maximises_pairs_not_greedy_iou():
    # Greedy by IoU would pair (0, 0) and leave 1 pair; the best matching has 2 at t = 0.4.
    iou = np.array([[0.6, 0.4], [0.45, 0.0]])
    assert instance.true_positives(iou, 0.4) == 2
    assert instance.true_positives(iou, 0.5) == 1
    assert instance.true_positives(iou, 0.7) == 0
    assert instance.true_positives(np.zeros((0, 3)), 0.5) == 0


def test_overlapping_predictions_match_once():
    gt = _labels((5, 5), a=(1, 1, 3, 1, 3))
    exact = gt == 1
    bigger = exact.copy()
    bigger[3, 1] = True  # IoU 4/5
    scores = instance.instance_scores(np.stack([exact, bigger]), gt)
    assert scores["TP"] == [1] * 10
    assert scores["mSA"] == pytest.approx(0.5)  # TP 1, FP 1, FN 0 at every threshold


def test_empty_images():
    nothing = np.zeros((4, 4), dtype=int)
    missed = instance.instance_scores(nothing, GT[:4, :4])  # object 1, a corner of 2
    assert missed["mSA"] == 0.0 and missed["n_pred"] == 0 and missed["n_gt"] == 2
    both_empty = instance.instance_scores(nothing, nothing)
    assert both_empty["mSA"] == 0.0 and both_empty["precision50"] == 0.0


def test_aggregate_is_the_mean_over_images():
    first = instance.instance_scores(PRED, GT)
    second = instance.instance_scores(GT, GT)  # perfect: every SA is 1
    total = instance.aggregate([first, second])
    assert total["mSA"] == pytest.approx((first["mSA"] + 1.0) / 2)
    assert total["SA50"] == pytest.approx((2 / 3 + 1) / 2)
    assert (total["n_pred"], total["n_gt"], total["n_images"]) == (5, 4, 2)
    # pooled: t = 0.5: TP 4 of 5 + 4 - 4 -> 4/5; t >= 0.55: TP 3 -> 3/6
    assert total["pooled_mSA"] == pytest.approx((4 / 5 + 9 * 3 / 6) / 10)
    with pytest.raises(ValueError):
        instance.aggregate([])


def _record(mask, iou=0.9, stability=0.95):
    return {
        "segmentation": mask,
        "area": int(mask.sum()),
        "predicted_iou": iou,
        "stability_score": stability,
    }


def test_records_to_labels_paints_like_micro_sam():
    """Largest first, each smaller mask painted over the larger ones (micro-sam's
    `mask_data_to_segmentation`): a nucleus inside its cluster's mask stays visible."""
    big = np.zeros((6, 6), bool)
    big[0:3, 0:4] = True  # 12 px, painted first: id 1
    inside = np.zeros_like(big)
    inside[1, 1] = True  # 1 px inside big, painted last: id 4
    cutter = np.zeros_like(big)
    cutter[0:3, 1] = True  # 3 px, cuts column 1 out of big: id 3
    apart = np.zeros_like(big)
    apart[4:6, 4:6] = True  # 4 px: id 2
    records = [_record(m) for m in (inside, apart, big, cutter)]
    labels = record_masks.records_to_labels(records, (6, 6))
    expected = np.zeros((6, 6), np.uint32)
    expected[big], expected[apart], expected[cutter], expected[inside] = 1, 2, 3, 4
    np.testing.assert_array_equal(labels, expected)
    # min_object_size skips small records (inside, cutter) and small painted pieces
    sized = record_masks.records_to_labels(records, (6, 6), 4)
    np.testing.assert_array_equal(sized, big * 1 + apart * 2)
    # size 5 skips apart (4 px) too
    np.testing.assert_array_equal(record_masks.records_to_labels(records, (6, 6), 5), big * 1)
    # with_background clears the largest label: here the background itself (harmless)
    np.testing.assert_array_equal(
        record_masks.records_to_labels(records, (6, 6), with_background=True), labels
    )
    huge = np.ones((6, 6), bool)
    huge[4:6, 4:6] = False  # 32 px around the apart mask
    cleared = record_masks.records_to_labels([_record(huge), _record(apart)], (6, 6), 0, True)
    np.testing.assert_array_equal(cleared, apart * 1)
    covering = record_masks.records_to_labels([_record(huge | apart), _record(apart)], (6, 6))
    np.testing.assert_array_equal(covering, huge * 1 + apart * 2)  # apart painted over it


def test_records_to_labels_splits_components():
    wide = np.zeros((5, 7), bool)
    wide[1:4, :] = True  # 21 px, painted first
    bar = np.zeros_like(wide)
    bar[:, 3] = True  # 5 px, painted over the wide one: cuts it in two
    records = [_record(wide), _record(bar)]
    plain = record_masks.records_to_labels(records, (5, 7))
    assert set(np.unique(plain)) == {0, 1, 2}
    assert (plain == 2).sum() == 5 and (plain == 1).sum() == 18
    split = record_masks.records_to_labels(records, (5, 7), split_components=True)
    assert set(np.unique(split)) == {0, 1, 2, 3}  # wide's left and right halves, and the bar
    assert split[2, 0] != split[2, 6] and len(np.unique(split[:, 3])) == 1


def test_coco_mask_ap_by_hand():
    gt = _labels((8, 8), a=(1, 0, 2, 0, 2), b=(2, 4, 8, 4, 6))
    exact = [_record(gt == 1), _record(gt == 2, iou=0.5)]
    assert coco_ap.coco_mask_ap([exact], [gt]) == {"AP": 1.0, "AP50": 1.0, "AP75": 1.0}
    # object b (8 px) predicted with 3 px more: IoU 8/11 = 0.727, a hit at t <= 0.70 only
    partial = (gt == 2).copy()
    partial[4:7, 6] = True
    records = [_record(gt == 1), _record(partial)]
    result = coco_ap.coco_mask_ap([records], [gt])
    # where b is missed: a hit (precision 1 up to recall 0.5), then the miss: COCO's
    # 101-point interpolated AP is 51/101 (recall points 0.00 .. 0.50)
    half = 51 / 101
    assert result["AP50"] == pytest.approx(1.0)
    assert result["AP75"] == pytest.approx(half)
    assert result["AP"] == pytest.approx((5 * 1.0 + 5 * half) / 10)
    # the same masks as uncompressed or COCO RLEs give the same numbers
    as_rle = [dict(r, segmentation=masks_to_rle_np(r["segmentation"])) for r in records]
    as_coco = [dict(r, segmentation=masks_to_coco(r["segmentation"][None])[0]) for r in records]
    assert coco_ap.coco_mask_ap([as_rle], [gt]) == result
    assert coco_ap.coco_mask_ap([as_coco], [np.stack([gt == 1, gt == 2])]) == result
    assert coco_ap.coco_mask_ap([[]], [gt])["AP"] == 0.0
    assert np.isnan(coco_ap.coco_mask_ap([records], [np.zeros((8, 8), int)])["AP"])


def masks_to_rle_np(mask: np.ndarray) -> dict:
    import torch

    return masks_to_rle(torch.as_tensor(mask)[None])[0]


class _FakeGenerator:
    """Two fixed candidates; `select` keeps those above the thresholds."""

    def __init__(self, good: np.ndarray, bad: np.ndarray) -> None:
        self.records = [_record(good, iou=0.8, stability=0.9), _record(bad, 0.65, 0.95)]
        self.proposals = []

    def propose(self, image, pred_iou_thresh, stability_score_thresh):
        self.proposals.append((pred_iou_thresh, stability_score_thresh))
        return self.records

    def select(self, candidates, pred_iou_thresh, stability_score_thresh):
        return [
            r
            for r in candidates
            if r["predicted_iou"] > pred_iou_thresh
            and r["stability_score"] >= stability_score_thresh
        ]


def test_grid_search_proposes_once_per_image_and_picks_the_best_cell():
    gt = _labels((8, 8), a=(1, 2, 4, 2, 4))
    bad = np.zeros((8, 8), bool)
    bad[6:8, 6:8] = True
    fake = _FakeGenerator(gt == 1, bad)
    image = np.zeros((8, 8, 3), np.uint8)
    result = threshold_search.grid_search(fake, [image, image], [gt, gt], [0.6, 0.7], [0.6, 0.92])
    assert fake.proposals == [(0.6, 0.6), (0.6, 0.6)]
    msa = {(r["pred_iou_thresh"], r["stability_score_thresh"]): r["mSA"] for r in result.rows}
    # both kept: TP 1, FP 1 -> 0.5; only the bad one or none: 0; only the good one: 1
    assert msa == {(0.6, 0.6): 0.5, (0.6, 0.92): 0.0, (0.7, 0.6): 1.0, (0.7, 0.92): 0.0}
    assert (result.best["pred_iou_thresh"], result.best["stability_score_thresh"]) == (0.7, 0.6)


def test_default_search_values_are_micro_sams():
    ious, stabilities = threshold_search.default_search_values()
    assert ious[0] == 0.6 and ious[-1] == 0.9 and len(ious) == 13
    assert stabilities[0] == 0.6 and stabilities[-1] == 0.95 and len(stabilities) == 15
    assert ious[1] == 0.625


# a crowd region (COCO iscrowd) in the bottom-right 2 x 3 corner of an 8 x 8 image: one
# prediction lies inside it (6 px, all inside), one just above it and one far from it
CROWD = np.zeros((8, 8), dtype=bool)
CROWD[6:8, 5:8] = True
CROWD_GT = _labels((8, 8), a=(1, 0, 2, 0, 2))
CROWD_PRED = _labels(
    (8, 8), a=(1, 0, 2, 0, 2), inside=(2, 6, 8, 5, 8), near=(3, 4, 6, 4, 8), far=(4, 3, 4, 0, 1)
)


def test_predictions_in_crowd_regions_are_neither_tp_nor_fp():
    np.testing.assert_allclose(instance.crowd_fractions(CROWD_PRED, CROWD), [0, 1, 0, 0])
    scores = instance.instance_scores(CROWD_PRED, CROWD_GT, crowd=CROWD)
    # every t: TP 1 (object a); the prediction inside the crowd is ignored; FP 2 (near, far)
    assert scores["TP"] == [1] * 10 and scores["FP"] == [2] * 10
    assert scores["SA50"] == pytest.approx(1 / 3) and scores["precision50"] == pytest.approx(1 / 3)
    counted = instance.instance_scores(CROWD_PRED, CROWD_GT)  # crowd unknown: 3 FP
    assert counted["FP"] == [3] * 10 and counted["SA50"] == pytest.approx(1 / 4)
    pooled = instance.aggregate([scores, scores])
    assert pooled["pooled_mSA"] == pytest.approx(2 / (4 + 2))  # TP 2, FP 4, FN 0


def test_crowd_overlap_counts_from_the_threshold_up():
    """COCO's rule: ignored at t when the prediction's area inside crowds is >= t."""
    pred = np.zeros((8, 8), dtype=np.int32)
    pred[6:8, 3:8] = 5  # 10 px, 6 in the crowd: fraction 0.6
    scores = instance.instance_scores(pred, CROWD_GT, crowd=CROWD)
    assert scores["FP"] == [0, 0, 0] + [1] * 7  # ignored at t = 0.50, 0.55, 0.60 only


def test_coco_ap_ignores_predictions_on_crowd_regions():
    def record(mask: np.ndarray, score: float) -> dict:
        return {"segmentation": masks_to_coco(mask[None])[0], "predicted_iou": score}

    masks = instance.instance_masks(CROWD_PRED)  # a, inside, near, far
    scores = [0.5, 0.9, 0.3, 0.2]  # the crowd prediction ranked first
    records = [record(m, s) for m, s in zip(masks, scores, strict=True)]
    with_crowd = coco_ap.coco_mask_ap([records], [CROWD_GT], crowds=[CROWD])
    without_it = coco_ap.coco_mask_ap([records[:1] + records[2:]], [CROWD_GT])
    assert with_crowd == pytest.approx(without_it)  # as if that prediction were not there
    assert with_crowd["AP50"] == pytest.approx(1.0)
    assert coco_ap.coco_mask_ap([records], [CROWD_GT])["AP50"] < 1.0  # counted as a miss

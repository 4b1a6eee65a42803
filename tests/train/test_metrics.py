"""PromptedSegmentationMetrics against masks whose IoU and Dice are known by construction."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.utilities.data import dim_zero_sum

from samft.train.metrics import PROMPT_TYPE_NAMES, PromptedSegmentationMetrics


def _pair(inter: int, pred_only: int, gt_only: int, size: int = 10):
    """A (pred, gt) pair of 1 x size x size masks with the given pixel counts.

    IoU = inter / (inter + pred_only + gt_only); Dice = 2 inter / (2 inter + pred_only + gt_only).
    """
    flat_pred = torch.zeros(size * size, dtype=torch.bool)
    flat_gt = torch.zeros(size * size, dtype=torch.bool)
    flat_pred[:inter] = flat_gt[:inter] = True
    flat_pred[inter : inter + pred_only] = True
    flat_gt[inter + pred_only : inter + pred_only + gt_only] = True
    return flat_pred.view(1, size, size), flat_gt.view(1, size, size)


def _batch(*pairs):
    preds, gts = zip(*pairs, strict=True)
    return torch.cat(preds), torch.cat(gts)


# object: (inter, pred_only, gt_only) -> IoU, Dice
A = (30, 10, 20)  # IoU 0.5,  Dice 60/90
B = (40, 0, 10)  # IoU 0.8,  Dice 80/90
C = (10, 30, 0)  # IoU 0.25, Dice 20/50
D = (0, 0, 0)  # nothing to find, nothing predicted: IoU 1, Dice 1


def test_overall_and_prompt_type_buckets():
    metric = PromptedSegmentationMetrics()
    pred, gt = _batch(_pair(*A), _pair(*B), _pair(*C), _pair(*D))
    metric.update(pred, gt, prompt_types=torch.tensor([0, 2, 2, 1]))
    out = metric.compute()
    assert out["miou"].item() == pytest.approx((0.5 + 0.8 + 0.25 + 1) / 4)
    assert out["dice"].item() == pytest.approx((60 / 90 + 80 / 90 + 20 / 50 + 1) / 4)
    assert out["miou/one_point"].item() == pytest.approx(0.5)
    assert out["miou/box"].item() == pytest.approx((0.8 + 0.25) / 2)
    assert out["dice/box"].item() == pytest.approx((80 / 90 + 20 / 50) / 2)
    assert out["miou/points"].item() == pytest.approx(1.0)
    assert out["num_objects"].item() == 4
    # nothing for the size split, the click rounds or the IoU head was given
    assert not any(k.startswith(("miou/small", "miou/click", "iou_head")) for k in out)
    assert all(torch.isfinite(v) for v in out.values())


def test_padding_is_ignored():
    pred, gt = _pair(*A)
    valid = torch.ones_like(gt)
    # mark as padding 10 of the pixels where neither mask is set: IoU unchanged...
    valid.view(-1)[-10:] = False
    # ...and add prediction errors there that must not count
    pred.view(-1)[-10:] = True
    metric = PromptedSegmentationMetrics()
    metric.update(pred, gt, valid, prompt_types=torch.tensor([0]))
    assert metric.compute()["miou"].item() == pytest.approx(0.5)


def test_click_rounds_are_separate_from_the_first_prompt():
    metric = PromptedSegmentationMetrics()
    pred, gt = _batch(_pair(*A), _pair(*C))
    metric.update(pred, gt, prompt_types=torch.tensor([0, 0]))
    pred, gt = _batch(_pair(*B), _pair(*D))
    metric.update(pred, gt, click_round=1)
    pred, gt = _pair(*C)
    metric.update(pred, gt, click_round=3)
    metric.update(pred, gt, prompt_types=torch.tensor([1]), click_round=5)
    out = metric.compute()
    assert out["miou"].item() == pytest.approx((0.5 + 0.25) / 2)
    assert out["num_objects"].item() == 2
    assert out["miou/click_1"].item() == pytest.approx((0.8 + 1.0) / 2)
    assert out["miou/click_3"].item() == pytest.approx(0.25)
    assert out["dice/click_5"].item() == pytest.approx(20 / 50)
    assert "miou/click_2" not in out and "miou/points" not in out
    with pytest.raises(ValueError, match="click_round"):
        metric.update(pred, gt, click_round=11)


def test_object_size_buckets_use_coco_thresholds():
    metric = PromptedSegmentationMetrics()
    pred, gt = _batch(_pair(*A), _pair(*B), _pair(*C), _pair(*D))
    areas = torch.tensor([32**2 - 1, 32**2, 96**2 - 1, 96**2])  # small, medium, medium, large
    metric.update(pred, gt, prompt_types=torch.zeros(4, dtype=torch.long), object_areas=areas)
    out = metric.compute()
    assert out["miou/small"].item() == pytest.approx(0.5)
    assert out["miou/medium"].item() == pytest.approx((0.8 + 0.25) / 2)
    assert out["miou/large"].item() == pytest.approx(1.0)


def test_iou_head_mean_absolute_error():
    metric = PromptedSegmentationMetrics()
    pred, gt = _batch(_pair(*A), _pair(*B))
    metric.update(pred, gt, None, torch.tensor([0.7, 0.5]), torch.tensor([0, 0]))
    metric.update(pred, gt, None, torch.tensor([9.0, 9.0]), click_round=1)  # not at round 0
    assert metric.compute()["iou_head_mae"].item() == pytest.approx((0.2 + 0.3) / 2)


def test_reset_and_merged_states_are_sums():
    pred1, gt1 = _batch(_pair(*A), _pair(*B))
    pred2, gt2 = _batch(_pair(*C), _pair(*D))
    types = torch.tensor([0, 2])
    one, two, both = (PromptedSegmentationMetrics() for _ in range(3))
    one.update(pred1, gt1, None, torch.tensor([0.5, 0.5]), types)
    two.update(pred2, gt2, None, torch.tensor([0.5, 0.5]), types)
    both.update(pred1, gt1, None, torch.tensor([0.5, 0.5]), types)
    both.update(pred2, gt2, None, torch.tensor([0.5, 0.5]), types)
    one.merge_state(two)  # what the DDP sum of the states amounts to
    merged, reference = one.compute(), both.compute()
    assert merged.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(merged[key], reference[key])
    assert reference["miou/box"].item() == pytest.approx((0.8 + 1.0) / 2)
    for name, default in both._defaults.items():
        assert both._reductions[name] is dim_zero_sum, name  # every state is synced by a sum
        assert isinstance(default, torch.Tensor)

    both.reset()
    pred, gt = _pair(*C)
    both.update(pred, gt, prompt_types=torch.tensor([1]))
    out = both.compute()
    assert out["miou"].item() == pytest.approx(0.25)
    assert out["num_objects"].item() == 1
    assert "miou/box" not in out and "iou_head_mae" not in out


def test_input_errors_are_explained():
    metric = PromptedSegmentationMetrics()
    pred, gt = _pair(*A)
    with pytest.raises(ValueError, match="prompt_types"):
        metric.update(pred, gt)
    with pytest.raises(ValueError, match="keys of"):
        metric.update(pred, gt, prompt_types=torch.tensor([7]))
    assert set(PROMPT_TYPE_NAMES) == {0, 1, 2}

"""SAM's focal + dice + IoU-MSE loss against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from samft.train.losses import SamLoss, dice_loss, mask_iou, sigmoid_focal_loss

LN3 = math.log(3.0)


def _tiny():
    """One object, one 2x2 mask: probabilities 0.5, 0.75 / 0.25, 0.75; target 1, 0 / 1, 1."""
    logits = torch.tensor([[[[0.0, LN3], [-LN3, LN3]]]])  # 1 x 1 x 2 x 2
    target = torch.tensor([[[True, False], [True, True]]])  # 1 x 2 x 2
    return logits, target


def _focal_pixel(p: float, t: int, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p_t = p if t else 1 - p
    alpha_t = alpha if t else 1 - alpha
    return alpha_t * (1 - p_t) ** gamma * -math.log(p_t)


# per pixel: (probability, target) of _tiny()
PIXELS = [(0.5, 1), (0.75, 0), (0.25, 1), (0.75, 1)]


def test_focal_matches_hand_computation():
    logits, target = _tiny()
    expected = sum(_focal_pixel(p, t) for p, t in PIXELS) / 4
    # written out: 0.25*0.25*ln2, 0.75*0.5625*ln4, 0.25*0.5625*ln4, 0.25*0.0625*ln(4/3)
    assert expected == pytest.approx(
        (
            0.0625 * math.log(2)
            + 0.421875 * math.log(4)
            + 0.140625 * math.log(4)
            + 0.015625 * math.log(4 / 3)
        )
        / 4
    )
    out = sigmoid_focal_loss(logits, target)
    assert out.shape == (1, 1)
    assert out.item() == pytest.approx(expected, rel=1e-5)


def test_focal_without_alpha_and_other_gamma():
    logits, target = _tiny()
    expected = sum(-math.log(p if t else 1 - p) * (1 - (p if t else 1 - p)) for p, t in PIXELS)
    out = sigmoid_focal_loss(logits, target, alpha=-1, gamma=1.0)
    assert out.item() == pytest.approx(expected / 4, rel=1e-5)


def test_dice_matches_hand_computation():
    logits, target = _tiny()
    # sum(p*t) = 0.5 + 0.25 + 0.75 = 1.5; sum(p) = 2.25; sum(t) = 3
    expected = 1 - (2 * 1.5 + 1) / (2.25 + 3 + 1)
    assert expected == pytest.approx(0.36)
    assert dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_mask_iou_matches_hand_computation():
    logits, target = _tiny()
    # logits > 0: F T / F T (0 is not foreground); target T F / T T -> 1 / 4
    assert mask_iou(logits, target).item() == pytest.approx(0.25)
    empty = torch.full((1, 1, 2, 2), -5.0)
    assert mask_iou(empty, torch.zeros(1, 2, 2, dtype=torch.bool)).item() == 1.0
    assert mask_iou(empty, target).item() == 0.0


def test_padding_changes_nothing():
    logits, target = _tiny()
    valid = torch.tensor([[[True, False], [True, True]]])
    kept = [PIXELS[0], PIXELS[2], PIXELS[3]]
    focal = sigmoid_focal_loss(logits, target, valid)
    assert focal.item() == pytest.approx(sum(_focal_pixel(p, t) for p, t in kept) / 3, rel=1e-5)
    # kept: p = 0.5, 0.25, 0.75 all on target: sum(p*t) = 1.5, sum(p) = 1.5, sum(t) = 3
    dice = dice_loss(logits, target, valid)
    assert dice.item() == pytest.approx(1 - 4 / 5.5, rel=1e-5)
    assert mask_iou(logits, target, valid).item() == pytest.approx(1 / 3)

    # whatever the logits and target are on padding, nothing changes
    other_logits = logits.clone()
    other_logits[0, 0, 0, 1] = 30.0
    other_target = target.clone()
    other_target[0, 0, 1] = True
    assert sigmoid_focal_loss(other_logits, other_target, valid).item() == focal.item()
    assert dice_loss(other_logits, other_target, valid).item() == dice.item()
    loss = SamLoss()
    a = loss(logits, torch.zeros(1, 1), target, valid)
    b = loss(other_logits, torch.zeros(1, 1), other_target, valid)
    assert a.total.item() == b.total.item()


def test_padding_with_a_larger_random_image():
    """An object in a padded frame scores the same as the object cropped to its image."""
    logits = torch.randn(2, 3, 6, 8)
    target = torch.rand(2, 6, 8) > 0.5
    valid = torch.zeros(2, 6, 8, dtype=torch.bool)
    valid[:, :4, :5] = True
    crop = (logits[..., :4, :5], target[:, :4, :5])
    torch.testing.assert_close(sigmoid_focal_loss(logits, target, valid), sigmoid_focal_loss(*crop))
    torch.testing.assert_close(dice_loss(logits, target, valid), dice_loss(*crop))
    torch.testing.assert_close(mask_iou(logits, target, valid), mask_iou(*crop))


def test_sam_loss_single_mask_total():
    logits, target = _tiny()
    iou_pred = torch.tensor([[0.75]])
    out = SamLoss()(logits, iou_pred, target)
    focal = sum(_focal_pixel(p, t) for p, t in PIXELS) / 4
    dice = 0.36
    iou_mse = (0.75 - 0.25) ** 2
    assert out.focal.item() == pytest.approx(focal, rel=1e-5)
    assert out.dice.item() == pytest.approx(dice, rel=1e-5)
    assert out.iou.item() == pytest.approx(iou_mse, rel=1e-5)
    assert out.total.item() == pytest.approx(20 * focal + dice + iou_mse, rel=1e-5)
    assert out.best_index.tolist() == [0]
    assert out.best_iou.tolist() == [0.25]

    weighted = SamLoss(focal_weight=2.0, dice_weight=3.0, iou_weight=4.0)(logits, iou_pred, target)
    assert weighted.total.item() == pytest.approx(2 * focal + 3 * dice + 4 * iou_mse, rel=1e-5)


def _three_masks():
    """Two objects with three masks each; mask 1 of object 0 and mask 2 of object 1 are right."""
    gt = torch.zeros(2, 8, 8, dtype=torch.bool)
    gt[0, 2:6, 2:6] = True
    gt[1, :3, :] = True
    logits = torch.randn(2, 3, 8, 8)
    logits[0, 1] = torch.where(gt[0], 8.0, -8.0)
    logits[1, 2] = torch.where(gt[1], 8.0, -8.0)
    return logits.requires_grad_(), gt


def test_multimask_trains_only_the_best_mask():
    logits, gt = _three_masks()
    iou_pred = torch.full((2, 3), 0.5, requires_grad=True)
    out = SamLoss()(logits, iou_pred, gt)
    assert out.best_index.tolist() == [1, 2]
    assert out.best_iou.tolist() == [1.0, 1.0]
    out.total.backward()
    for obj, best in enumerate([1, 2]):
        for m in range(3):
            grad = logits.grad[obj, m]
            if m == best:
                assert grad.abs().sum() > 0
            else:
                assert torch.count_nonzero(grad) == 0
    # supervise_all_iou: every mask's IoU prediction is trained
    assert torch.count_nonzero(iou_pred.grad) == 6


def test_multimask_loss_is_the_minimum_over_masks():
    logits = torch.randn(4, 3, 5, 5)
    gt = torch.rand(4, 5, 5) > 0.5
    out = SamLoss(iou_weight=0.0)(logits, torch.zeros(4, 3), gt)
    per_mask = 20 * sigmoid_focal_loss(logits, gt) + dice_loss(logits, gt)  # 4 x 3
    assert out.total.item() == pytest.approx(per_mask.min(dim=1).values.mean().item(), rel=1e-5)
    assert out.best_index.tolist() == per_mask.argmin(dim=1).tolist()


def test_iou_supervision_all_or_best():
    logits, gt = _three_masks()
    true_iou = mask_iou(logits, gt)  # 2 x 3
    iou_pred = torch.rand(2, 3, requires_grad=True)
    all_masks = SamLoss(supervise_all_iou=True)(logits, iou_pred, gt)
    assert all_masks.iou.item() == pytest.approx(
        ((iou_pred - true_iou) ** 2).mean(dim=1).mean().item(), rel=1e-5
    )
    best_only = SamLoss(supervise_all_iou=False)(logits, iou_pred, gt)
    rows = torch.arange(2)
    expected = ((iou_pred[rows, best_only.best_index] - 1.0) ** 2).mean()
    assert best_only.iou.item() == pytest.approx(expected.item(), rel=1e-5)
    best_only.total.backward()
    assert torch.count_nonzero(iou_pred.grad) == 2
    assert iou_pred.grad[0, 1] != 0 and iou_pred.grad[1, 2] != 0


def test_loss_averages_over_objects():
    logits = torch.randn(3, 3, 6, 6)
    iou_pred = torch.rand(3, 3)
    gt = torch.rand(3, 6, 6) > 0.6
    valid = torch.ones(3, 6, 6, dtype=torch.bool)
    valid[1, :, 4:] = False
    loss = SamLoss()
    together = loss(logits, iou_pred, gt, valid)
    singles = [
        loss(logits[i : i + 1], iou_pred[i : i + 1], gt[i : i + 1], valid[i : i + 1])
        for i in range(3)
    ]
    for key in ("total", "focal", "dice", "iou"):
        mean = sum(getattr(s, key) for s in singles) / 3
        torch.testing.assert_close(getattr(together, key), mean)

    # objects summed over ranks: 6 objects in all -> half the per-rank mean
    global_count = loss(logits, iou_pred, gt, valid, num_objects=torch.tensor(6.0))
    torch.testing.assert_close(global_count.total, together.total / 2)
    assert loss(logits, iou_pred, gt, valid, num_objects=3).total.item() == pytest.approx(
        together.total.item()
    )


def test_empty_batch_gives_zero_not_nan():
    out = SamLoss()(torch.zeros(0, 3, 4, 4), torch.zeros(0, 3), torch.zeros(0, 4, 4), None, 0)
    assert out.total.item() == 0.0
    assert out.best_index.shape == (0,)


def test_shape_errors_name_what_was_expected():
    with pytest.raises(ValueError, match="P x H x W"):
        sigmoid_focal_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4))
    with pytest.raises(ValueError, match="iou_predictions"):
        SamLoss()(torch.zeros(2, 3, 4, 4), torch.zeros(2, 1), torch.zeros(2, 4, 4))


def test_eligible_masks_limit_the_choice_and_the_iou_supervision():
    torch.manual_seed(0)
    gt = torch.zeros(2, 4, 4, dtype=torch.bool)
    gt[:, 1:3, 1:3] = True
    perfect = torch.where(gt, 10.0, -10.0)
    logits = torch.stack([-perfect, perfect, -perfect, perfect], dim=1)  # 2 x 4 x 4 x 4
    logits.requires_grad_(True)
    iou_pred = torch.full((2, 4), 0.5, requires_grad=True)
    # object 0 may use only mask 0 (single output), object 1 only masks 1..3
    answering = torch.tensor([[True, False, False, False], [False, True, True, True]])
    out = SamLoss()(logits, iou_pred, gt, None, 2.0, answering=answering)
    assert out.best_index.tolist() == [0, 1]
    out.total.backward()
    assert logits.grad[0, 1:].abs().sum() == 0 and logits.grad[0, 0].abs().sum() > 0
    assert logits.grad[1, [0, 2, 3]].abs().sum() == 0
    # IoU MSE only over answering masks: object 0 -> (0.5 - 0)^2, object 1 -> mean of
    # (0.5 - 1)^2, (0.5 - 0)^2, (0.5 - 1)^2
    expected = (0.25 + (0.25 + 0.25 + 0.25) / 3) / 2
    assert out.iou.item() == pytest.approx(expected)
    assert iou_pred.grad[0, 1:].abs().sum() == 0 and iou_pred.grad[1, 0] == 0


def test_sam2_loss_iou_l1_and_object_score_by_hand():
    """SAM 2's loss on `_tiny`'s object (true IoU 0.25 of its one mask): the IoU head by L1,
    |0.75 - 0.25| = 0.5; the object-score BCE of logit 2 for a present object,
    log(1 + e^-2) = 0.126928; with Meta's weights 20 : 1 : 1 : 1. The default SAM loss
    ignores the scores (weight 0) but still reports their BCE."""
    logits, target = _tiny()
    iou_pred = torch.tensor([[0.75]])
    scores = torch.tensor([[2.0]])
    focal = sum(_focal_pixel(p, t) for p, t in PIXELS) / 4
    bce = math.log(1 + math.exp(-2.0))
    out = SamLoss(iou_loss="l1", object_score_weight=1.0)(
        logits, iou_pred, target, object_scores=scores
    )
    assert out.iou.item() == pytest.approx(0.5, rel=1e-6)
    assert out.object_score.item() == pytest.approx(bce, rel=1e-6)
    assert out.total.item() == pytest.approx(20 * focal + 0.36 + 0.5 + bce, rel=1e-5)
    assert set(out.parts()) == {"total", "focal", "dice", "iou", "object_score"}

    plain = SamLoss()(logits, iou_pred, target, object_scores=scores)
    assert plain.total.item() == pytest.approx(20 * focal + 0.36 + 0.25, rel=1e-5)
    assert SamLoss()(logits, iou_pred, target).object_score is None
    assert set(SamLoss()(logits, iou_pred, target).parts()) == {"total", "focal", "dice", "iou"}


def test_object_score_target_is_whether_the_object_has_a_valid_pixel():
    """Two objects, logit 0 each (BCE log 2 whatever the target) and logit 3: present
    -> log(1 + e^-3) = 0.048587, absent (its only pixel on the padding) -> 3 + log(1 + e^-3)
    = 3.048587; summed over objects and divided by the divisor 2."""
    gt = torch.zeros(2, 4, 4, dtype=torch.bool)
    gt[0, 1, 1] = True
    gt[1, 3, 3] = True
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    valid[:, 3, :] = False  # the bottom row is padding: object 1 has no valid pixel
    logits = torch.zeros(2, 1, 4, 4)
    iou_pred = torch.zeros(2, 1)
    loss = SamLoss(object_score_weight=1.0)
    half = loss(logits, iou_pred, gt, valid, object_scores=torch.zeros(2, 1))
    assert half.object_score.item() == pytest.approx(math.log(2), rel=1e-6)
    out = loss(logits, iou_pred, gt, valid, object_scores=torch.full((2, 1), 3.0))
    present, absent = math.log(1 + math.exp(-3.0)), 3 + math.log(1 + math.exp(-3.0))
    assert out.object_score.item() == pytest.approx((present + absent) / 2, rel=1e-6)


def test_iou_loss_choice_is_checked_in_the_loss_and_its_config():
    from samft.train.config import LossConfig, as_config

    with pytest.raises(ValueError, match="iou_loss"):
        SamLoss(iou_loss="huber")
    with pytest.raises(ValueError, match="loss.iou_loss"):
        as_config(LossConfig, {"iou_loss": "huber"}, "loss")
    with pytest.raises(ValueError, match="object_score_weight"):
        as_config(LossConfig, {"object_score_weight": -1.0}, "loss")
    defaults = LossConfig().sam_loss_arguments()
    assert defaults["iou_loss"] == "mse" and defaults["object_score_weight"] == 0.0

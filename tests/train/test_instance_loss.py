"""The instance head's loss against values worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from samft.train.instance_loss import instance_head_loss, soft_dice

# one 2 x 2 image whose only object is its top-left pixel: centre distance 0.5 there,
# boundary distance 1
TARGETS = torch.tensor([[[[1.0, 0], [0, 0]], [[0.5, 0], [0, 0]], [[1.0, 0], [0, 0]]]])
ALL = torch.ones(1, 2, 2, dtype=torch.bool)


def test_logits_zero_give_the_hand_worked_loss():
    # p = 0.5 everywhere. Foreground: sum(p t) = 0.5, sum(p^2) = 1, sum(t^2) = 1 ->
    # 1 - 2 / 3; cross-entropy ln 2 on every pixel. Centre (object only): p = t = 0.5 ->
    # 0. Boundary: sum(p t) = 0.5, sum(p^2) = 0.25, sum(t^2) = 1 -> 1 - 2 / 2.25.
    loss = instance_head_loss(torch.zeros(1, 3, 2, 2), TARGETS, ALL, num_images=1)
    assert loss.foreground.item() == pytest.approx(1 / 3 + math.log(2))
    assert loss.center.item() == pytest.approx(0.0, abs=1e-7)
    assert loss.boundary.item() == pytest.approx(1 / 9)
    assert loss.total.item() == pytest.approx(1 / 3 + math.log(2) + 1 / 9)
    weighted = instance_head_loss(
        torch.zeros(1, 3, 2, 2), TARGETS, ALL, 1, bce_weight=0.0, distance_weight=2.0
    )
    assert weighted.total.item() == pytest.approx(1 / 3 + 2 / 9)


def test_padding_never_counts_and_images_are_averaged():
    valid = ALL.clone()
    valid[0, 1, 1] = False  # sum(p^2) over 3 pixels: 0.75 -> 1 - 2 / 2.75
    loss = instance_head_loss(torch.zeros(1, 3, 2, 2), TARGETS, valid, 1)
    assert loss.foreground.item() == pytest.approx(1 - 2 / 2.75 + math.log(2))
    two = instance_head_loss(
        torch.zeros(2, 3, 2, 2), TARGETS.expand(2, -1, -1, -1), ALL.expand(2, -1, -1), 2
    )
    one = instance_head_loss(torch.zeros(1, 3, 2, 2), TARGETS, ALL, 1)
    assert two.total.item() == pytest.approx(one.total.item())


def test_exact_maps_cost_only_the_cross_entropy_floor():
    # foreground logits +-20; distance logits logit(t) on the object, anything off it
    logits = torch.full((1, 3, 2, 2), -20.0)
    logits[0, 0, 0, 0] = 20.0
    logits[0, 1, 0, 0] = 0.0  # sigmoid 0.5 = the centre target
    logits[0, 2, 0, 0] = 20.0  # ~1 = the boundary target
    logits[0, 1:, 1, 1] = 5.0  # off the object: ignored
    loss = instance_head_loss(logits, TARGETS, ALL, 1)
    assert loss.total.item() == pytest.approx(0.0, abs=1e-6)


def test_soft_dice_of_an_empty_target_predicted_empty_is_zero():
    assert soft_dice(torch.zeros(1, 3, 3), torch.zeros(1, 3, 3)).item() == 0.0


def test_shape_checks():
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        instance_head_loss(torch.zeros(1, 2, 2, 2), TARGETS[:, :2], ALL, 1)
    with pytest.raises(ValueError, match="B x H x W"):
        instance_head_loss(torch.zeros(1, 3, 2, 2), TARGETS, ALL[:, :1], 1)

"""Automatic-mode targets against hand-worked answers, and their loss in SamLoss."""

from __future__ import annotations

import pytest
import torch

from samft.data.batch import AutomaticPoints
from samft.model.registry import build_sam
from samft.train.automatic_loss import automatic_point_loss
from samft.train.automatic_targets import best_instance_iou, containing_instance
from samft.train.losses import SamLoss


def _instances() -> tuple[torch.Tensor, torch.Tensor]:
    """Image 0: A = rows 0-3 x cols 0-3 (16 px), B = rows 1-2 x cols 1-2 (4 px) inside A;
    image 1: C = rows 4-7 x cols 4-7 (16 px)."""
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, 0:4, 0:4] = True
    masks[1, 1:3, 1:3] = True
    masks[2, 4:8, 4:8] = True
    return masks, torch.tensor([0, 0, 1])


def test_containing_instance_is_the_smallest_on_the_points_own_image():
    masks, owners = _instances()
    points = torch.tensor(
        [
            [1.6, 1.2],  # pixel (col 2, row 1): in A and B -> B, the smaller
            [0.0, 3.0],  # col 0, row 3: in A only
            [5.0, 5.0],  # in C's square, but on image 0: background
            [5.0, 5.0],  # the same pixel on image 1: C
            [3.6, 0.0],  # rounds to col 4: just outside A
        ]
    )
    image_index = torch.tensor([0, 0, 0, 1, 0])
    assert containing_instance(points, image_index, masks, owners).tolist() == [1, 0, -1, 2, -1]


def test_containing_instance_without_instances_is_background():
    empty = torch.zeros(0, 8, 8, dtype=torch.bool)
    found = containing_instance(
        torch.tensor([[1.0, 1.0]]), torch.tensor([0]), empty, torch.zeros(0)
    )
    assert found.tolist() == [-1]


def test_best_instance_iou_is_the_best_match_on_the_same_image():
    masks, owners = _instances()
    pred = torch.zeros(2, 2, 8, 8, dtype=torch.bool)
    pred[0, 0, 0:4, 0:2] = True  # 8 px inside A (IoU 8/16), covering 2 px of B (IoU 2/10)
    pred[0, 1, 1:3, 1:4] = True  # 6 px: B gives 4/6, A gives 6/16 -> 4/6
    pred[1, 0, 4:8, 4:8] = True  # exactly C, but prompt 1 is on image 0 -> no instance: 0
    pred[1, 1, 0:4, 0:4] = True  # exactly A -> 1
    iou = best_instance_iou(pred, torch.tensor([0, 0]), masks, owners)
    torch.testing.assert_close(iou, torch.tensor([[0.5, 4 / 6], [0.0, 1.0]]))
    # pixels outside `valid` (rows 2+) leave the predicted masks, not the instances:
    # mask (0, 0) keeps 4 px of A's 16, so 4 / 16
    valid = torch.zeros(2, 8, 8, dtype=torch.bool)
    valid[:, :2] = True
    cut = best_instance_iou(pred, torch.tensor([0, 0]), masks, owners, valid)
    assert cut[0, 0].item() == pytest.approx(4 / 16)


def test_loss_takes_given_iou_targets_and_mask_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    iou_pred = torch.rand(2, 4)
    gt = torch.rand(2, 8, 8) > 0.5
    loss_fn = SamLoss()
    plain = loss_fn(logits, iou_pred, gt)
    targets = torch.full((2, 4), 0.25)
    given = loss_fn(logits, iou_pred, gt, iou_targets=targets, mask_weights=torch.tensor([1, 0]))
    # IoU MSE against the given targets, mean over the 4 masks, summed over objects / 2
    expected_iou = ((iou_pred - 0.25) ** 2).mean(1).sum() / 2
    assert given.iou.item() == pytest.approx(expected_iou.item())
    # object 1's masks are not trained: focal and dice are object 0's alone (halved)
    only_first = loss_fn(logits[:1], iou_pred[:1], gt[:1], num_objects=2)
    assert given.focal.item() == pytest.approx(only_first.focal.item())
    assert given.dice.item() == pytest.approx(only_first.dice.item())
    assert given.focal.item() < plain.focal.item()
    with pytest.raises(ValueError, match="iou_targets"):
        loss_fn(logits, iou_pred, gt, iou_targets=targets[:, :3])


def test_automatic_point_loss_targets_the_instance_under_each_point():
    """Two points on an image with one instance: the one inside it trains the mask towards
    it, the one on the background trains only the IoU head (towards IoU with the instance)."""
    torch.manual_seed(0)
    sam = build_sam("tiny", image_size=64).eval()
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 10:30, 10:30] = True
    automatic = AutomaticPoints(
        points=torch.tensor([[20.0, 20.0], [50.0, 50.0]]),
        image_index=torch.tensor([0, 0]),
        instance_masks=masks,
        instance_image_index=torch.tensor([0]),
    )
    with torch.no_grad():
        embeddings = sam.image_encoder(sam.preprocess(torch.rand(1, 3, 64, 64) * 255))
    loss_fn = SamLoss()
    sizes = torch.tensor([[64, 64]])
    loss = automatic_point_loss(sam, loss_fn, embeddings, automatic, sizes, num_points=2.0)
    assert torch.isfinite(loss.total)
    # the same focal and dice as the inside point alone, halved
    inside = AutomaticPoints(
        automatic.points[:1], automatic.image_index[:1], masks, torch.tensor([0])
    )
    alone = automatic_point_loss(sam, loss_fn, embeddings, inside, sizes, num_points=2.0)
    assert loss.focal.item() == pytest.approx(alone.focal.item(), rel=1e-5)
    assert loss.dice.item() == pytest.approx(alone.dice.item(), rel=1e-5)
    assert loss.iou.item() > alone.iou.item()  # the background point adds IoU error
    loss.total.backward()
    assert sam.mask_decoder.iou_prediction_head.layers[0].weight.grad is not None

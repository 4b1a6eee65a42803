"""Correction clicks land in the errors with the right label, or are padding when none."""

from __future__ import annotations

import pytest
import torch

from samft.train.clicks import PAD_LABEL, error_maps, sample_correction_points


def _random_masks(num_objects: int = 16, size: int = 24):
    pred = torch.rand(num_objects, size, size) > 0.5
    gt = torch.rand(num_objects, size, size) > 0.5
    return pred, gt


def _value_at(masks: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """masks[p, y, x] at each object's point (coords P x 1 x 2, x then y)."""
    x = coords[:, 0, 0].long()
    y = coords[:, 0, 1].long()
    return masks[torch.arange(masks.shape[0]), y, x]


@pytest.mark.parametrize("mode", ["random", "center"])
def test_points_land_in_errors_with_their_label(mode):
    pred, gt = _random_masks()
    valid = torch.ones_like(gt)
    valid[::2, :, 18:] = False  # padding on the right for every other object
    coords, labels = sample_correction_points(pred, gt, valid, mode=mode)
    assert coords.shape == (16, 1, 2) and coords.dtype == torch.float32
    assert labels.shape == (16, 1) and labels.dtype == torch.long
    fn = gt & ~pred & valid
    fp = pred & ~gt & valid
    assert (labels[:, 0] >= 0).all()
    on_fn = _value_at(fn, coords)
    on_fp = _value_at(fp, coords)
    assert torch.equal(on_fn, labels[:, 0] == 1)
    assert torch.equal(on_fp, labels[:, 0] == 0)
    assert (coords == coords.round()).all()  # pixel indices, no half-pixel shift


def test_only_false_negatives_give_positive_clicks():
    gt = torch.zeros(8, 10, 10, dtype=torch.bool)
    gt[:, 2:7, 3:9] = True
    pred = torch.zeros_like(gt)  # everything missed: all errors are false negatives
    coords, labels = sample_correction_points(pred, gt)
    assert (labels == 1).all()
    assert _value_at(gt, coords).all()
    coords, labels = sample_correction_points(gt, pred)  # all false positives
    assert (labels == 0).all()


def test_no_error_gives_padding():
    pred, gt = _random_masks(num_objects=4)
    gt[1] = pred[1]  # object 1 is perfect
    valid = torch.ones_like(gt)
    valid[3] = False  # object 3 has no valid pixel, so no error it could be told about
    for mode in ("random", "center"):
        coords, labels = sample_correction_points(pred, gt, valid, mode=mode)
        assert labels[:, 0].tolist()[1] == PAD_LABEL and labels[3, 0] == PAD_LABEL
        assert coords[1].tolist() == [[0.0, 0.0]] and coords[3].tolist() == [[0.0, 0.0]]
        assert labels[0, 0] >= 0 and labels[2, 0] >= 0


def test_random_is_deterministic_under_a_seeded_generator():
    pred, gt = _random_masks()
    first = sample_correction_points(pred, gt, generator=torch.Generator().manual_seed(3))
    again = sample_correction_points(pred, gt, generator=torch.Generator().manual_seed(3))
    other = sample_correction_points(pred, gt, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_random_is_uniform_over_the_errors():
    """Four error pixels, 4000 draws: each pixel gets about a quarter."""
    gt = torch.zeros(4000, 3, 3, dtype=torch.bool)
    gt[:, 0, 0] = gt[:, 2, 2] = True  # two false negatives
    pred = torch.zeros_like(gt)
    pred[:, 0, 2] = pred[:, 1, 1] = True  # two false positives
    coords, labels = sample_correction_points(pred, gt, generator=torch.Generator().manual_seed(0))
    flat = (coords[:, 0, 1] * 3 + coords[:, 0, 0]).long()
    counts = torch.bincount(flat, minlength=9)
    assert counts[[1, 3, 5, 6, 7]].sum() == 0
    for pixel in (0, 2, 4, 8):
        assert 850 < counts[pixel] < 1150  # 1000 expected, sd about 27
    assert (labels[:, 0] == 1).sum() == counts[0] + counts[8]


def test_center_finds_the_middle_of_a_square_error():
    gt = torch.zeros(2, 20, 20, dtype=torch.bool)
    gt[0, 3:10, 8:15] = True  # 7 x 7 square missed: centre row 6, column 11
    pred = torch.zeros_like(gt)
    pred[1, 11:16, 2:7] = True  # 5 x 5 square predicted on background: centre row 13, col 4
    coords, labels = sample_correction_points(pred, gt, mode="center")
    assert coords[:, 0].tolist() == [[11.0, 6.0], [4.0, 13.0]]
    assert labels[:, 0].tolist() == [1, 0]


def test_center_prefers_the_deeper_error_region():
    gt = torch.zeros(1, 30, 30, dtype=torch.bool)
    gt[0, 2:5, 0:30] = True  # missed sliver 3 x 30 (area 90, depth 2)
    pred = torch.zeros_like(gt)
    pred[0, 15:24, 10:19] = True  # false positive 9 x 9 (area 81, depth 5)
    coords, labels = sample_correction_points(pred, gt, mode="center")
    assert coords[0].tolist() == [[14.0, 19.0]]
    assert labels[0, 0] == 0


def test_center_treats_the_image_edge_as_boundary():
    gt = torch.zeros(1, 12, 12, dtype=torch.bool)
    gt[0, :, :5] = True  # a band along the left edge, columns 0..4: deepest at column 2
    coords, _ = sample_correction_points(torch.zeros_like(gt), gt, mode="center")
    assert coords[0, 0, 0] == 2.0


def test_error_maps_and_input_checks():
    pred = torch.tensor([[[1, 0], [1, 0]]], dtype=torch.uint8)
    gt = torch.tensor([[[True, True], [False, False]]])
    fn, fp = error_maps(pred, gt)
    assert fn.tolist() == [[[False, True], [False, False]]]
    assert fp.tolist() == [[[False, False], [True, False]]]
    with pytest.raises(TypeError, match="threshold logits"):
        sample_correction_points(torch.zeros(1, 2, 2), gt)
    with pytest.raises(ValueError, match="mode"):
        sample_correction_points(gt, gt, mode="edge")
    coords, labels = sample_correction_points(gt[:0], gt[:0])
    assert coords.shape == (0, 1, 2) and labels.shape == (0, 1)

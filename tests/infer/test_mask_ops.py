"""Mask operations of automatic mask generation against the official `segment_anything.utils.amg`
and, for NMS, against a brute-force greedy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samft.infer import mask_ops, rle


@pytest.fixture(scope="module")
def amg(official):
    return official.utils.amg


def _blobs(count: int, h: int, w: int, seed: int) -> torch.Tensor:
    """`count x h x w` masks of a few random rectangles each, plus empty, full and 1-pixel
    ones, and one touching the first pixel (a leading run of ones)."""
    gen = np.random.default_rng(seed)
    masks = np.zeros((count, h, w), dtype=bool)
    for mask in masks[4:]:
        for _ in range(gen.integers(1, 4)):
            y0, x0 = gen.integers(0, h), gen.integers(0, w)
            mask[y0 : y0 + gen.integers(1, h // 2), x0 : x0 + gen.integers(1, w // 2)] = True
    masks[1] = True
    masks[2, h // 2, w // 3] = True
    masks[3, :2, :3] = True
    return torch.as_tensor(masks)


@pytest.mark.parametrize("n", [1, 4, 7, 32])
def test_point_grid_matches_official(amg, n):
    np.testing.assert_array_equal(mask_ops.point_grid(n), amg.build_point_grid(n))


@pytest.mark.parametrize(("n", "layers", "scale"), [(32, 0, 1), (32, 2, 2), (16, 3, 1), (9, 1, 4)])
def test_layer_grids_match_official(amg, n, layers, scale):
    ours = mask_ops.layer_point_grids(n, layers, scale)
    ref = amg.build_all_layer_point_grids(n, layers, scale)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(a, b)


def test_layer_grids_refuse_empty_layers():
    with pytest.raises(ValueError, match="no points in crop layer 2"):
        mask_ops.layer_point_grids(9, 2, 4)


@pytest.mark.parametrize("size", [(256, 256), (428, 640), (1000, 333), (7, 9)])
@pytest.mark.parametrize("layers", [0, 1, 3])
@pytest.mark.parametrize("overlap", [512 / 1500, 0.0, 0.5])
def test_crop_boxes_match_official(amg, size, layers, overlap):
    assert mask_ops.crop_boxes(size, layers, overlap) == amg.generate_crop_boxes(
        size, layers, overlap
    )


def test_mask_boxes_match_official(amg):
    masks = _blobs(12, 23, 31, seed=1)
    torch.testing.assert_close(mask_ops.mask_boxes(masks), amg.batched_mask_to_box(masks))
    stacked = masks.reshape(3, 4, 23, 31)  # leading batch axes, and one mask alone
    torch.testing.assert_close(mask_ops.mask_boxes(stacked), amg.batched_mask_to_box(stacked))
    torch.testing.assert_close(mask_ops.mask_boxes(masks[5]), amg.batched_mask_to_box(masks[5]))
    assert mask_ops.mask_boxes(masks[:0]).shape == (0, 4)


def test_stability_score_matches_official(amg):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 40, 50, generator=gen) * 3
    logits[0] = -5.0  # empty at both cut-offs: 0 / 0
    for offset in (1.0, 0.25):
        ours = mask_ops.stability_score(logits, 0.0, offset)
        ref = amg.calculate_stability_score(logits, 0.0, offset)
        torch.testing.assert_close(ours, ref, equal_nan=True)


def test_rle_matches_official(amg):
    masks = _blobs(10, 17, 29, seed=2)
    ours = rle.masks_to_rle(masks)
    assert ours == amg.mask_to_rle_pytorch(masks)
    decoded = rle.rles_to_masks(ours)
    np.testing.assert_array_equal(decoded, masks.numpy())
    for code, mask in zip(ours, masks.numpy(), strict=True):
        np.testing.assert_array_equal(rle.rle_to_mask(code), amg.rle_to_mask(code))
        np.testing.assert_array_equal(rle.rle_to_mask(code), mask)
        assert rle.rle_area(code) == amg.area_from_rle(code) == mask.sum()
    assert rle.rle_to_coco(ours) == [amg.coco_encode_rle(code) for code in ours]
    assert rle.masks_to_coco(masks.numpy()) == rle.rle_to_coco(ours)
    assert rle.masks_to_rle(masks[:0]) == []
    uniform = torch.zeros(3, 4, 5, dtype=torch.bool)  # no run changes anywhere
    uniform[1] = True
    assert rle.masks_to_rle(uniform) == amg.mask_to_rle_pytorch(uniform)


def test_uncrop_matches_official(amg):
    crop = [10, 20, 60, 50]
    boxes = torch.tensor([[0, 0, 5, 5], [3, 4, 49, 29]])
    points = torch.tensor([[0.5, 1.5], [12.25, 7.0]], dtype=torch.float64)
    torch.testing.assert_close(
        mask_ops.uncrop_boxes(boxes, crop), amg.uncrop_boxes_xyxy(boxes, crop)
    )
    torch.testing.assert_close(
        mask_ops.uncrop_points(points, crop), amg.uncrop_points(points, crop)
    )
    masks = _blobs(5, 30, 50, seed=3)
    torch.testing.assert_close(
        mask_ops.uncrop_masks(masks, crop, 80, 70), amg.uncrop_masks(masks, crop, 80, 70)
    )
    assert mask_ops.uncrop_masks(masks, [0, 0, 50, 30], 30, 50) is masks


def test_near_crop_edge_matches_official(amg):
    gen = torch.Generator().manual_seed(4)
    boxes = torch.randint(0, 300, (200, 4), generator=gen)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2])
    image = [0, 0, 400, 300]
    for crop in ([0, 0, 400, 300], [100, 50, 380, 300], [0, 120, 250, 300]):
        ours = mask_ops.near_crop_edge(boxes, crop, image)
        ref = amg.is_box_near_crop_edge(boxes, crop, image)
        torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("mode", ["holes", "islands"])
@pytest.mark.parametrize("area", [1, 5, 40, 10_000])
def test_remove_small_regions_matches_official(amg, mode, area):
    for mask in _blobs(12, 40, 40, seed=5).numpy():
        mask = mask ^ _blobs(5, 40, 40, seed=6).numpy()[4]  # holes inside the blobs
        ours, changed = mask_ops.remove_small_regions(mask, area, mode)
        ref, ref_changed = amg.remove_small_regions(mask, area, mode)
        assert changed == ref_changed
        np.testing.assert_array_equal(ours, ref)
    with pytest.raises(ValueError, match="holes"):
        mask_ops.remove_small_regions(mask, 3, "both")


def _reference_nms(boxes, scores, categories, threshold):
    """Brute-force greedy NMS, float32 box IoU, ties by input order."""
    b = boxes.float().numpy()
    order = sorted(range(len(b)), key=lambda i: -float(scores[i]))
    kept = []
    for i in order:
        suppressed = False
        for j in kept:
            if categories is not None and int(categories[i]) != int(categories[j]):
                continue
            w = np.float32(max(np.float32(0), min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0])))
            h = np.float32(max(np.float32(0), min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1])))
            inter = w * h
            area_i = (b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1])
            area_j = (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1])
            with np.errstate(invalid="ignore", divide="ignore"):
                if inter / (area_i + area_j - inter) > threshold:
                    suppressed = True
                    break
        if not suppressed:
            kept.append(i)
    return kept


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7])
@pytest.mark.parametrize("with_categories", [False, True])
@pytest.mark.parametrize("block", [7, 1024])
def test_nms_matches_brute_force(threshold, with_categories, block):
    gen = torch.Generator().manual_seed(7)
    xy = torch.randint(0, 60, (150, 2), generator=gen)
    wh = torch.randint(0, 25, (150, 2), generator=gen)
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[10:20] = boxes[0]  # duplicates
    boxes[20:23] = 0  # empty-mask boxes never overlap anything
    scores = torch.randint(0, 20, (150,), generator=gen).float() / 20  # many ties
    categories = torch.randint(0, 3, (150,), generator=gen) if with_categories else None
    keep = mask_ops.batched_nms(boxes.float(), scores, categories, threshold, block=block)
    assert keep.tolist() == _reference_nms(boxes, scores, categories, threshold)


def test_nms_empty():
    keep = mask_ops.batched_nms(torch.zeros(0, 4), torch.zeros(0), None, 0.5)
    assert keep.dtype == torch.long and keep.numel() == 0

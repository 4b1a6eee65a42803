from __future__ import annotations

import pytest
import torch

from samft.model.registry import build_sam

ATOL = 1e-4


def _batched_input(size: int, mask_size: int):
    """Two images of different shapes (input frame) with different prompt kinds."""
    g = torch.Generator().manual_seed(3)
    wide = torch.randint(0, 256, (3, size * 3 // 4, size), generator=g).float()
    tall = torch.randint(0, 256, (3, size, size // 2), generator=g).float()
    return [
        {
            "image": wide,
            "original_size": (300, 400),
            "point_coords": torch.rand(2, 3, 2, generator=g) * size * 0.7,
            "point_labels": torch.tensor([[1, 0, 1], [1, 1, -1]]),
            "boxes": torch.tensor([[10.0, 20.0, size / 2, size / 2], [5.0, 5.0, 40.0, 60.0]]),
        },
        {
            "image": tall,
            "original_size": (500, 250),
            "point_coords": torch.rand(1, 1, 2, generator=g) * size / 2,
            "point_labels": torch.tensor([[1]]),
            "mask_inputs": torch.randn(1, 1, mask_size, mask_size, generator=g),
        },
    ]


@pytest.mark.parametrize(
    ("pair_name", "multimask"),
    [("tiny_pair", True), ("tiny_pair", False), ("vit_b_pair", True)],
)
def test_forward_matches_official(pair_name, multimask, request):
    ours, ref = request.getfixturevalue(pair_name)
    batch = _batched_input(ours.image_size, ours.prompt_encoder.mask_input_size[0])
    got = ours(batch, multimask_output=multimask)
    want = ref(batch, multimask_output=multimask)
    for g, w, record in zip(got, want, batch, strict=True):
        torch.testing.assert_close(g["low_res_logits"], w["low_res_logits"], atol=ATOL, rtol=0)
        torch.testing.assert_close(g["iou_predictions"], w["iou_predictions"], atol=ATOL, rtol=0)
        assert g["masks"].dtype == torch.bool
        assert g["masks"].shape == w["masks"].shape
        assert g["masks"].shape[-2:] == record["original_size"]
        # Thresholded masks may only differ where the logit is within tolerance of 0.
        assert (g["masks"] != w["masks"]).float().mean() < 1e-3


def test_preprocess_normalises_and_pads_bottom_right():
    sam = build_sam("tiny")
    x = torch.full((1, 3, 100, 200), 200.0)
    out = sam.preprocess(x)
    assert out.shape == (1, 3, 256, 256)
    expected = (200.0 - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor(
        [58.395, 57.12, 57.375]
    )
    torch.testing.assert_close(out[0, :, 50, 150], expected)
    assert out[:, :, 100:].abs().sum() == 0 and out[:, :, :, 200:].abs().sum() == 0
    with pytest.raises(ValueError, match="larger than the model input 256"):
        sam.preprocess(torch.zeros(1, 3, 300, 200))


def test_postprocess_masks_matches_official_and_crops(tiny_pair):
    ours, ref = tiny_pair
    low_res = torch.randn(2, 3, 64, 64)
    got = ours.postprocess_masks(low_res, (192, 256), (480, 640))
    torch.testing.assert_close(got, ref.postprocess_masks(low_res, (192, 256), (480, 640)))
    assert got.shape == (2, 3, 480, 640)
    # A mask that is 1 on the image and -1 on the padding comes back all positive.
    edge = torch.ones(1, 1, 64, 64)
    edge[..., 48:, :] = -1  # rows 192.. of the 256 square are padding
    assert (ours.postprocess_masks(edge, (192, 256), (480, 640)) > 0).all()


def test_non_persistent_pixel_stats_and_attributes():
    sam = build_sam("tiny")
    assert "pixel_mean" not in sam.state_dict() and "pixel_std" not in sam.state_dict()
    assert sam.mask_threshold == 0.0 and sam.image_format == "RGB"
    assert sam.image_size == sam.image_encoder.img_size == 256

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from samft.model.transforms import ResizeLongestSide


@pytest.fixture(scope="module")
def real_images(coco_mini, ct_organs) -> list[np.ndarray]:
    paths = (
        sorted((coco_mini / "images").glob("*.jpg"))[:2]
        + sorted((ct_organs / "images").glob("*.png"))[:2]
    )
    return [np.array(Image.open(p).convert("RGB")) for p in paths]


@pytest.mark.parametrize("target", [1024, 256, 100])
def test_apply_image_equals_official_on_real_images(official, real_images, target):
    from segment_anything.utils.transforms import ResizeLongestSide as Official

    ours, ref = ResizeLongestSide(target), Official(target)
    for image in real_images:
        got = ours.apply_image(image)
        want = ref.apply_image(image)
        assert got.dtype == np.uint8 and got.shape == want.shape
        assert max(got.shape[:2]) == target
        np.testing.assert_array_equal(got, want)


def test_apply_image_keeps_single_channel_axis(real_images):
    gray = real_images[2][..., :1]
    out = ResizeLongestSide(64).apply_image(gray)
    assert out.shape[2] == 1 and max(out.shape[:2]) == 64
    with pytest.raises(ValueError, match="expects a uint8.*float32"):
        ResizeLongestSide(64).apply_image(gray.astype(np.float32))


@pytest.mark.parametrize(
    ("old", "target", "expected"),
    [
        ((480, 640), 1024, (768, 1024)),
        ((313, 640), 1024, (501, 1024)),
        ((512, 512), 256, (256, 256)),
        ((155, 225), 1024, (705, 1024)),
        ((640, 427), 256, (256, 171)),
    ],
)
def test_get_preprocess_shape_by_hand(old, target, expected):
    # 313 * 1.6 = 500.8 -> 501; 155 * 1024 / 225 = 705.4 -> 705; 427 * 0.4 = 170.8 -> 171
    assert ResizeLongestSide.get_preprocess_shape(*old, target) == expected


def test_coords_and_boxes_equal_official(official):
    from segment_anything.utils.transforms import ResizeLongestSide as Official

    ours, ref = ResizeLongestSide(1024), Official(1024)
    coords = np.array([[[10, 20], [639, 312]], [[0, 0], [320.5, 100.25]]])
    boxes = np.array([[10, 20, 300, 200], [0, 0, 639, 312]])
    size = (313, 640)
    got = ours.apply_coords(coords, size)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, ref.apply_coords(coords, size))
    np.testing.assert_array_equal(ours.apply_boxes(boxes, size), ref.apply_boxes(boxes, size))
    np.testing.assert_allclose(got[0, 1], [639 * 1.6, 312 * 501 / 313])
    assert coords[0, 0, 0] == 10  # input untouched

    t_coords = torch.as_tensor(coords)
    t_boxes = torch.as_tensor(boxes)
    got_t = ours.apply_coords_torch(t_coords, size)
    assert got_t.dtype == torch.float32
    torch.testing.assert_close(got_t, ref.apply_coords_torch(t_coords, size), atol=0, rtol=0)
    torch.testing.assert_close(
        ours.apply_boxes_torch(t_boxes, size), ref.apply_boxes_torch(t_boxes, size), atol=0, rtol=0
    )


def test_apply_image_torch_uses_height_and_width(real_images):
    """The official method sizes by (batch, channels) by mistake; ours by (H, W)."""
    image = real_images[0]
    batch = torch.as_tensor(image).permute(2, 0, 1)[None].float()
    out = ResizeLongestSide(256).apply_image_torch(batch)
    expected_hw = ResizeLongestSide.get_preprocess_shape(*image.shape[:2], 256)
    assert out.shape == (1, 3, *expected_hw)
    # Close to the PIL path (both antialiased bilinear), not identical.
    pil = torch.as_tensor(ResizeLongestSide(256).apply_image(image)).permute(2, 0, 1).float()
    assert (out[0] - pil).abs().mean() < 1.5

"""The resize to the input frame matches the official ResizeLongestSide."""

from __future__ import annotations

import numpy as np
import pytest

from samft.data.resize import input_shape, resize_image, resize_masks


@pytest.mark.parametrize("size", [64, 256, 1024])
def test_input_shape_matches_official(official, size):
    from segment_anything.utils.transforms import ResizeLongestSide

    for h, w in [
        (181, 258),
        (512, 512),
        (155, 225),
        (640, 427),
        (313, 640),
        (1, 999),
        (1500, 2250),
    ]:
        assert input_shape(h, w, size) == ResizeLongestSide.get_preprocess_shape(h, w, size)
        assert max(input_shape(h, w, size)) == size


def test_image_resize_matches_official_apply_image(official, ct_images):
    from segment_anything.utils.transforms import ResizeLongestSide

    for ct in ct_images:
        for size in (128, 1024):
            ours = resize_image(ct.image, size)
            np.testing.assert_array_equal(ours, ResizeLongestSide(size).apply_image(ct.image))


def test_masks_follow_the_image_and_never_vanish(ct_images):
    ct = ct_images[3]  # 181 x 258, 15 organs, some small
    for size in (64, 1024):
        masks = resize_masks(ct.masks, size)
        assert masks.shape == (15, *input_shape(181, 258, size))
        assert masks.any(axis=(1, 2)).all()
        scale = (size / 258) ** 2
        areas = masks.sum(axis=(1, 2)) / scale
        original = ct.masks.sum(axis=(1, 2))
        big = original > 500
        np.testing.assert_allclose(areas[big], original[big], rtol=0.15)
    # a single pixel shrunk 16x still leaves a pixel where it was
    one = np.zeros((1, 512, 512), dtype=bool)
    one[0, 300, 100] = True
    small = resize_masks(one, 32)
    assert small.sum() >= 1 and small[0, 300 // 16, 100 // 16]

"""Instance-head targets on hand-built id maps, against hand-worked values."""

from __future__ import annotations

import numpy as np
import pytest

from samft.data.instance_targets import (
    BOUNDARY_DISTANCE,
    CENTER_DISTANCE,
    FOREGROUND,
    instance_targets,
    object_center,
    paint_instances,
)

R2 = 1 / np.sqrt(2)


def test_a_three_by_three_square():
    labels = np.zeros((5, 5), dtype=np.int32)
    labels[1:4, 1:4] = 7
    targets = instance_targets(labels)
    assert targets.shape == (3, 5, 5) and targets.dtype == np.float32
    np.testing.assert_array_equal(targets[FOREGROUND], labels > 0)
    # centre (2, 2); edge middles at 1, corners at sqrt(2), the farthest
    np.testing.assert_allclose(
        targets[CENTER_DISTANCE][1:4, 1:4], [[1, R2, 1], [R2, 0, R2], [1, R2, 1]], atol=1e-6
    )
    # distance to the nearest outside pixel: 2 in the middle (r_max), 1 on the border
    np.testing.assert_allclose(
        targets[BOUNDARY_DISTANCE][1:4, 1:4], [[1, 1, 1], [1, 0, 1], [1, 1, 1]], atol=1e-6
    )
    assert not targets[:, labels == 0].any()  # 0 on the background


def test_a_one_pixel_object_and_a_line():
    labels = np.zeros((3, 7), dtype=np.int32)
    labels[0, 0] = 1
    labels[2, 1:6] = 2  # a line 5 px long: r = 1 everywhere
    targets = instance_targets(labels)
    assert targets[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    np.testing.assert_allclose(targets[CENTER_DISTANCE][2, 1:6], [1, 0.5, 0, 0.5, 1])
    np.testing.assert_array_equal(targets[BOUNDARY_DISTANCE][2, 1:6], 0.0)


def test_touching_objects_are_normalised_each_on_its_own():
    labels = np.zeros((5, 8), dtype=np.int32)
    labels[1:4, 1:4] = 1
    labels[1:4, 4:7] = 2  # touches object 1 along a column
    targets = instance_targets(labels)
    np.testing.assert_allclose(targets[:, :, 1:4], targets[:, :, 4:7], atol=1e-6)
    assert targets[BOUNDARY_DISTANCE][2, 3] == targets[BOUNDARY_DISTANCE][2, 4] == 1.0


def test_the_image_edge_is_a_border():
    labels = np.zeros((4, 4), dtype=np.int32)
    labels[:3, :3] = 1  # in the corner: its middle (1, 1) is the only pixel with r = 2
    boundary = instance_targets(labels)[BOUNDARY_DISTANCE][:3, :3]
    np.testing.assert_allclose(boundary, [[1, 1, 1], [1, 0, 1], [1, 1, 1]], atol=1e-6)


def test_a_ring_keeps_its_hole_and_centres_on_itself():
    labels = np.zeros((7, 7), dtype=np.int32)
    labels[1:6, 1:6] = 3
    labels[2:5, 2:5] = 0  # the hole: its centroid (3, 3) is off the object
    targets = instance_targets(labels)
    assert not targets[:, 2:5, 2:5].any()
    crop = labels[1:6, 1:6] > 0
    # the pixels nearest to the centroid (2, 2) of the crop are 2 px away; the first in
    # raster order, (0, 2), is the centre
    assert object_center(crop) == (0.0, 2.0)
    assert targets[CENTER_DISTANCE][1, 3] == 0.0
    # the farthest pixels are the far corners, sqrt(4^2 + 2^2) away; the far middle is 4
    assert targets[CENTER_DISTANCE][5, 1] == targets[CENTER_DISTANCE][5, 5] == 1.0
    assert targets[CENTER_DISTANCE][5, 3] == pytest.approx(4 / np.sqrt(20))


def test_ids_need_not_be_consecutive_and_an_empty_map_is_zero():
    labels = np.zeros((4, 4), dtype=np.int64)
    labels[0, 0], labels[3, 3] = 65535, 9
    targets = instance_targets(labels)
    assert targets[FOREGROUND].sum() == 2
    assert not instance_targets(np.zeros((3, 4), dtype=np.int32)).any()
    full = instance_targets(np.ones((2, 2), dtype=np.int32))  # no background at all
    np.testing.assert_array_equal(full[FOREGROUND], 1.0)
    with pytest.raises(ValueError, match="H x W"):
        instance_targets(np.zeros((2, 3, 3)))


def test_paint_instances_puts_smaller_masks_on_top():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 1:3, 1:3] = True  # small, first
    masks[1] = True  # the whole image
    labels = paint_instances(masks)
    assert labels.dtype == np.int32
    assert (labels[1:3, 1:3] == 1).all() and (labels == 2).sum() == 12
    assert paint_instances(np.zeros((0, 2, 3), dtype=bool)).shape == (2, 3)

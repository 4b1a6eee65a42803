"""The seeded watershed on hand-built maps, and targets -> watershed recovering the
instances exactly."""

from __future__ import annotations

import numpy as np
import pytest

from samft.data.instance_targets import instance_targets
from samft.infer.instance_watershed import relabel, seeded_watershed


def disc(shape: tuple[int, int], row: float, col: float, radius: float) -> np.ndarray:
    rr, cc = np.indices(shape)
    return (rr - row) ** 2 + (cc - col) ** 2 <= radius**2


def recovered(labels: np.ndarray, **thresholds) -> np.ndarray:
    return seeded_watershed(*instance_targets(labels), **thresholds)


def test_touching_discs_are_split_exactly():
    labels = np.zeros((40, 70), dtype=np.int32)
    labels[disc(labels.shape, 20, 18, 10)] = 5
    labels[disc(labels.shape, 20, 36, 10) & (labels == 0)] = 2  # overlaps: flattened touching
    labels[disc(labels.shape, 20, 55, 6) & (labels == 0)] = 9  # touches the second one
    found = recovered(labels)
    np.testing.assert_array_equal(found, relabel(labels))
    assert found.max() == 3


def test_a_hole_is_kept():
    labels = np.zeros((30, 30), dtype=np.int32)
    labels[disc(labels.shape, 15, 15, 11) & ~disc(labels.shape, 15, 15, 5)] = 1
    found = recovered(labels)
    np.testing.assert_array_equal(found, labels)
    assert not found[15, 15]


def test_a_one_pixel_object_beside_a_large_one():
    labels = np.zeros((20, 20), dtype=np.int32)
    labels[disc(labels.shape, 10, 10, 6)] = 1
    labels[3, 17] = 2
    labels[19, 0] = 3  # in the image's corner
    np.testing.assert_array_equal(recovered(labels), relabel(labels))
    assert (recovered(labels, min_size=2) > 0).sum() == (labels == 1).sum()


def test_an_empty_image():
    zeros = np.zeros((8, 9))
    found = seeded_watershed(zeros, zeros, zeros)
    assert found.shape == (8, 9) and found.dtype == np.int32 and not found.any()
    assert not recovered(np.zeros((5, 5), dtype=np.int32)).any()


def test_a_ridge_splits_one_foreground_region():
    # hand-built maps: one 3 x 7 foreground block, boundary distance 1 on its middle column,
    # seeds (both distances low) at its two ends
    foreground = np.zeros((5, 9))
    foreground[1:4, 1:8] = 0.9
    boundary = np.full((5, 9), 0.4)
    boundary[:, 4] = 1.0
    center = np.ones((5, 9))
    center[2, 1] = center[2, 7] = 0.1
    found = seeded_watershed(foreground, center, boundary)
    assert (found[1:4, 1:4] == 1).all() and (found[1:4, 5:8] == 2).all()
    assert found[2, 4] in (1, 2) and not found[0].any()
    # a higher foreground threshold leaves nothing; a seedless region is one object
    assert not seeded_watershed(foreground, center, boundary, foreground_thresh=0.95).any()
    assert seeded_watershed(foreground, np.ones((5, 9)), boundary).max() == 1


def test_maps_of_different_sizes_are_refused():
    with pytest.raises(ValueError, match="one size"):
        seeded_watershed(np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 5)))


def test_relabel_numbers_in_raster_order_and_drops_small_objects():
    labels = np.array([[0, 7, 7], [3, 3, 0], [3, 0, 5]])
    np.testing.assert_array_equal(relabel(labels), [[0, 1, 1], [2, 2, 0], [2, 0, 3]])
    np.testing.assert_array_equal(relabel(labels, min_size=2), [[0, 1, 1], [2, 2, 0], [2, 0, 0]])

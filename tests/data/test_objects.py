"""Object filtering (crowd, empty, min area, the paper's 90% rule) and the K-object cap."""

from __future__ import annotations

from collections import Counter

import numpy as np

from samft.data.objects import (
    SKIP_CROWD,
    SKIP_EMPTY,
    SKIP_LARGE,
    SKIP_SMALL,
    choose_objects,
    large_enough,
    skip_reason,
    usable_objects,
)
from samft.data.readers.base import ImageRecord, ObjectRecord


def test_skip_reasons():
    image_area = 100 * 100
    assert skip_reason(ObjectRecord(area=500, iscrowd=True), image_area, 10, 0.9) == SKIP_CROWD
    assert skip_reason(ObjectRecord(area=0), image_area, 0, 0.9) == SKIP_EMPTY
    assert skip_reason(ObjectRecord(area=9), image_area, 10, 0.9) == SKIP_SMALL
    assert skip_reason(ObjectRecord(area=10), image_area, 10, 0.9) is None
    assert skip_reason(ObjectRecord(area=9000), image_area, 10, 0.9) is None
    assert skip_reason(ObjectRecord(area=9001), image_area, 10, 0.9) == SKIP_LARGE


def test_usable_objects_counts_what_it_skips():
    objects = [ObjectRecord(area=a) for a in (0, 5, 50, 95)] + [ObjectRecord(50, iscrowd=True)]
    record = ImageRecord("a", path=None, height=10, width=10, objects=objects)
    skipped = Counter()
    assert usable_objects(record, min_area=10, max_area_fraction=0.9, skipped=skipped) == [2]
    assert skipped == {SKIP_EMPTY: 1, SKIP_SMALL: 1, SKIP_LARGE: 1, SKIP_CROWD: 1}


def test_choose_objects_caps_at_k_and_varies():
    rng = np.random.default_rng(0)
    candidates = list(range(3, 43))
    draws = [choose_objects(candidates, 5, rng) for _ in range(50)]
    assert all(len(d) == 5 and len(set(d)) == 5 and d == sorted(d) for d in draws)
    assert all(set(d) <= set(candidates) for d in draws)
    assert len({tuple(d) for d in draws}) > 40  # a new draw every time
    seen = set().union(*map(set, draws))
    assert len(seen) == 40  # over many epochs every object is used
    assert choose_objects([1, 2], 5, rng) == [1, 2]
    assert choose_objects(candidates, None, rng) == candidates
    again = choose_objects(candidates, 5, np.random.default_rng(7))
    assert again == choose_objects(candidates, 5, np.random.default_rng(7))


def test_large_enough():
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[1, :2, :2] = True  # 4 px
    masks[2] = True  # 16 px
    np.testing.assert_array_equal(large_enough(masks, 5), [False, False, True])
    np.testing.assert_array_equal(large_enough(masks, 0), [False, True, True])

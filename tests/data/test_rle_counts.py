"""The RLE counts check that guards pycocotools: pixels covered and object pixels of many
counts strings at once; a bad string is refused and does not disturb its neighbours."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from samft.data.readers.rle_counts import summarize_counts


def _random_masks(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = [(1, 1), (7, 3), (40, 60), (300, 200)]
    masks = []
    for k in range(count):
        h, w = shapes[k % len(shapes)]
        mask = rng.random((h, w)) < rng.random()
        if k % 3 == 0:  # one large rectangle: long runs, numbers of several characters
            mask = np.zeros((h, w), bool)
            mask[rng.integers(0, h) :, rng.integers(0, w) :] = True
        masks.append(mask)
    return masks


def _encode(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")


def test_summaries_match_the_masks():
    masks = _random_masks(600)  # pycocotools' area takes at most 255 at a time
    strings = [_encode(mask) for mask in masks]
    # bad strings and non-strings in between must not disturb their neighbours
    for k, bad in [(5, "0a"), (17, "0\x7f"), (41, None), (500, "é")]:
        strings.insert(k, bad)
    summaries = summarize_counts(strings)
    assert [s is None for s in summaries].count(True) == 4
    good = [s for s in summaries if s is not None]
    for mask, summary in zip(masks, good, strict=True):
        assert summary == (mask.size, int(mask.sum()))


def test_truncated_and_negative_counts():
    mask = np.zeros((30, 40), bool)
    mask[5:20, 10:30] = True
    text = _encode(mask)
    short = mask_utils.frPyObjects({"size": [30, 40], "counts": [155, 15, 15]}, 30, 40)
    assert summarize_counts([short["counts"].decode()]) == [(185, 15)]
    # "3" is 3 and "L" (28, sign bit 0x10 set) is -4: runs 3, -4
    assert summarize_counts(["3L", text, ""]) == [(-1, -4), (1200, 300), (0, 0)]
    # a number of 9 characters is far beyond any image (pycocotools holds 32 bits)
    ((total, _),) = summarize_counts(["0" + "o" * 8 + "0"])
    assert total > 2**32

"""Prompt sampling: points inside / outside, box noise bounds, mask prompts, seeding."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from samft.data.errors import DataError
from samft.data.prompts import (
    LABEL_BOX_BOTTOM_RIGHT,
    LABEL_BOX_TOP_LEFT,
    PROMPT_BOX,
    PROMPT_ONE_POINT,
    PROMPT_POINTS,
    PromptSampler,
    interior_region,
    mask_prompt,
    sample_box,
    sample_points,
    stable_seed,
    tight_box,
)
from samft.data.resize import resize_masks


@pytest.fixture(scope="module")
def organs(ct_images):
    """Real organ masks in a 256 px input frame."""
    return [m for ct in ct_images for m in resize_masks(ct.masks, 256)]


def _at(mask, coords):
    return mask[coords[:, 1].astype(int), coords[:, 0].astype(int)]


def test_tight_box_by_hand():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    mask[7, 4] = True
    np.testing.assert_array_equal(tight_box(mask), [3, 2, 8, 7])
    with pytest.raises(ValueError, match="empty"):
        tight_box(np.zeros((3, 3), dtype=bool))


def test_points_inside_and_outside(organs):
    rng = np.random.default_rng(0)
    for mask in organs:
        coords, labels = sample_points(mask, 3, 4, rng)
        assert coords.shape == (7, 2) and coords.dtype == np.float32
        np.testing.assert_array_equal(labels, [1, 1, 1, 0, 0, 0, 0])
        assert _at(mask, coords[:3]).all() and not _at(mask, coords[3:]).any()
        assert (coords[:, 0] < mask.shape[1]).all() and (coords[:, 1] < mask.shape[0]).all()


def test_positive_points_are_uniform_over_the_mask():
    mask = np.zeros((20, 40), dtype=bool)
    mask[5:15, 0:10] = True  # left square
    mask[5:15, 30:40] = True  # right square, same size
    coords, _ = sample_points(mask, 4000, 0, np.random.default_rng(1))
    assert _at(mask, coords).all()
    left = (coords[:, 0] < 20).mean()
    assert 0.46 < left < 0.54


def test_interior_points_keep_away_from_the_boundary(organs):
    rng = np.random.default_rng(2)
    for mask in organs:
        depth = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
        coords, _ = sample_points(
            mask, 5, 0, rng, positive_region="interior", interior_fraction=0.6
        )
        d = depth[coords[:, 1].astype(int), coords[:, 0].astype(int)]
        assert (d >= 0.6 * depth.max() - 1e-6).all()
    center = interior_region(organs[0], 1.0)
    assert center.any() and center.sum() < 0.05 * organs[0].sum()


def test_margin_negatives_stay_near_the_object(organs):
    rng = np.random.default_rng(3)
    for mask in organs:
        coords, labels = sample_points(mask, 1, 6, rng, negative_region="margin", margin=10)
        negatives = coords[labels == 0]
        assert not _at(mask, negatives).any()
        distance = cv2.distanceTransform(
            (~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
        )
        assert (distance[negatives[:, 1].astype(int), negatives[:, 0].astype(int)] <= 10.5).all()


def test_no_negatives_when_the_mask_fills_the_frame():
    coords, labels = sample_points(np.ones((8, 8), bool), 1, 3, np.random.default_rng(0))
    np.testing.assert_array_equal(labels, [1])


def test_box_noise_bounds_and_spread():
    mask = np.zeros((400, 400), dtype=bool)
    mask[100:151, 50:351] = True  # tight box (50, 100, 350, 150): 300 wide, 50 high
    tight = tight_box(mask)
    rng = np.random.default_rng(4)
    boxes = np.stack([sample_box(mask, rng, noise_std=0.1, max_noise=20) for _ in range(4000)])
    noise = boxes - tight
    assert np.abs(noise).max() <= 20 + 1e-4  # capped at 20 px
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
    # x: std 30 px clipped at 20 -> many at the cap; y: std 5 px, rarely clipped
    assert (np.abs(noise[:, 0]) > 19.99).mean() > 0.4
    assert 4.7 < noise[:, 1].std() < 5.3 and 4.7 < noise[:, 3].std() < 5.3
    assert abs(noise[:, 1].mean()) < 0.3
    # inside the frame even for an object at the border
    edge = np.zeros((50, 50), dtype=bool)
    edge[0:10, 40:50] = True
    edge_boxes = np.stack([sample_box(edge, rng, 0.5, 20) for _ in range(500)])
    assert edge_boxes.min() >= 0 and edge_boxes[:, [0, 2]].max() <= 49
    # no noise: the tight box itself
    np.testing.assert_array_equal(sample_box(mask, rng, noise_std=0.0), tight)


def test_mask_prompt_frame_and_values():
    mask = np.zeros((64, 48), dtype=bool)  # input frame of a 64 px model, portrait
    mask[8:40, 8:24] = True
    logits = mask_prompt(mask, np.random.default_rng(0), max_jitter=0, logit=8.0)
    assert logits.shape == (16, 16) and logits.dtype == np.float32
    assert logits[2:10, 2:6].min() == 8.0  # inside, in the 4x smaller frame
    assert logits[12:, :].max() == -8.0 and logits[:, 12:].max() == -8.0  # outside and padding
    jittered = mask_prompt(mask, np.random.default_rng(1), max_jitter=4)
    assert jittered.shape == (16, 16) and (jittered > 0).any()


def test_sampler_draws_types_with_the_configured_odds(organs):
    rng = np.random.default_rng(5)
    paper = PromptSampler()
    kinds = [paper.sample(organs[i % len(organs)], rng).type for i in range(2000)]
    assert set(kinds) == {PROMPT_ONE_POINT, PROMPT_BOX}
    assert 0.46 < np.mean(np.array(kinds) == PROMPT_BOX) < 0.54

    box_only = PromptSampler(point_prob=0, box_prob=1)
    prompt = box_only.sample(organs[0], rng)
    assert prompt.type == PROMPT_BOX and prompt.coords.shape == (2, 2)
    np.testing.assert_array_equal(prompt.labels, [LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT])
    assert prompt.mask_input is None

    several = PromptSampler(point_prob=1, box_prob=0, num_points=[1, 3], num_negatives=[1, 2])
    counts = set()
    for i in range(300):
        prompt = several.sample(organs[i % len(organs)], rng)
        assert prompt.type == PROMPT_POINTS
        positives, negatives = (prompt.labels == 1).sum(), (prompt.labels == 0).sum()
        counts.add((int(positives), int(negatives)))
    assert counts == {(p, n) for p in (1, 2, 3) for n in (1, 2)}

    with_mask = PromptSampler(mask_prompt_prob=1.0)
    assert with_mask.sample(organs[0], rng).mask_input.shape == (64, 64)


def test_same_seed_same_prompts(organs):
    sampler = PromptSampler(num_points=(1, 4), num_negatives=(0, 3), mask_prompt_prob=0.5)

    def draw(seed):
        rng = np.random.default_rng(seed)
        return [sampler.sample(m, rng) for m in organs]

    first, again, other = draw(11), draw(11), draw(12)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.coords, b.coords)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.type == b.type and (a.mask_input is None) == (b.mask_input is None)
    assert any(not np.array_equal(a.coords, b.coords) for a, b in zip(first, other, strict=True))


def test_stable_seed_is_the_same_in_another_process():
    code = "from samft.data.prompts import stable_seed; print(stable_seed(3, '000000000285'))"
    env = {"PYTHONHASHSEED": "123"}
    import os

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}
    )
    assert int(out.stdout) == stable_seed(3, "000000000285")
    assert stable_seed(3, "a") != stable_seed(4, "a") != stable_seed(3, "b")
    assert 0 <= stable_seed(0, "x") < 2**63


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_points": [0, 2]}, r"PromptSampler.num_points = \[0, 2\]; expected 1 <= min"),
        ({"num_points": [3, 2]}, r"PromptSampler.num_points"),
        ({"num_negatives": 2}, r"PromptSampler.num_negatives = 2; expected \[min, max\]"),
        ({"point_prob": 0, "box_prob": 0}, r"point_prob \+ box_prob must be > 0"),
        ({"box_prob": -1}, r"PromptSampler.box_prob = -1"),
        ({"positive_region": "centre"}, r"positive_region = 'centre'"),
        ({"negative_region": "near"}, r"negative_region = 'near'"),
    ],
)
def test_sampler_config_errors(kwargs, message):
    with pytest.raises(DataError, match=message):
        PromptSampler(**kwargs)

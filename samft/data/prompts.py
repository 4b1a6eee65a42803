"""Prompt sampling: points, boxes and mask prompts drawn from one object's mask.

Everything here is a pure function of a mask and an explicit `np.random.Generator`, so
evaluation can draw the very same prompts from a seed. Masks are H x W bool in the model's
input frame (longest side = image size, not padded); coordinates are (x, y) pixel indices
in that frame, which is what the official prompt encoder expects (it adds the half-pixel
shift itself).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np

from samft.data.errors import DataError
from samft.model.prompts import (
    LABEL_BOX_BOTTOM_RIGHT,
    LABEL_BOX_TOP_LEFT,
    LABEL_NEGATIVE,
    LABEL_POSITIVE,
    PROMPT_BOX,
    PROMPT_ONE_POINT,
    PROMPT_POINTS,
)

POSITIVE_REGIONS = ("mask", "interior")
NEGATIVE_REGIONS = ("outside", "margin")


@dataclass
class Prompt:
    """The prompt drawn for one object.

    coords: K x 2 float32, (x, y) in the input frame.
    labels: K int64 (1 positive, 0 negative, 2/3 box corners).
    type: PROMPT_ONE_POINT, PROMPT_POINTS or PROMPT_BOX.
    mask_input: S/4 x S/4 float32 logits in the low-res frame of the padded input, or None.
    """

    coords: np.ndarray
    labels: np.ndarray
    type: int
    mask_input: np.ndarray | None = None


def stable_seed(base_seed: int, key: str | int) -> int:
    """A 63-bit seed from (base seed, key) that is the same in every process and run.

    Python's own `hash` of a string changes between processes, so it cannot seed
    validation prompts that must match across workers and epochs.
    """
    digest = hashlib.blake2b(f"{int(base_seed)}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def tight_box(mask: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) float32: first and last mask column and row, inclusive."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("tight_box: the mask is empty")
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)


def sample_box(
    mask: np.ndarray, rng: np.random.Generator, noise_std: float = 0.1, max_noise: float = 20.0
) -> np.ndarray:
    """The tight box with each corner coordinate moved by Gaussian noise, as in the SAM paper.

    The noise on x (y) has a standard deviation of `noise_std` times the box width (height),
    clipped to +-`max_noise` pixels. The result stays inside the H x W frame, with
    x0 <= x1 and y0 <= y1. Returns (x0, y0, x1, y1) float32.
    """
    box = tight_box(mask).astype(np.float64)
    width, height = box[2] - box[0], box[3] - box[1]
    scale = noise_std * np.array([width, height, width, height])
    noise = np.clip(rng.standard_normal(4) * scale, -max_noise, max_noise)
    box = box + noise
    box[[0, 2]] = np.clip(box[[0, 2]], 0, mask.shape[1] - 1)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, mask.shape[0] - 1)
    x0, x1 = sorted(box[[0, 2]])
    y0, y1 = sorted(box[[1, 3]])
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def _pick_pixels(region: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n (x, y) pixels drawn uniformly from a bool region; repeats only when it is too small."""
    flat = np.flatnonzero(region)
    if n <= 0 or flat.size == 0:
        return np.zeros((0, 2), dtype=np.float32)
    chosen = rng.choice(flat, size=n, replace=n > flat.size)
    rows, cols = np.divmod(chosen, region.shape[1])
    return np.stack([cols, rows], axis=1).astype(np.float32)


def interior_region(mask: np.ndarray, fraction: float) -> np.ndarray:
    """Mask pixels at least `fraction` of the deepest pixel's distance from the boundary.

    The image border counts as boundary. fraction=0 is the whole mask; fraction=1 keeps
    only the deepest pixels (the "center" click of interactive segmentation).
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    depth = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    return mask & (depth >= fraction * depth.max())


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def margin_region(mask: np.ndarray, margin: int) -> np.ndarray:
    """Pixels outside the mask but within `margin` pixels of it."""
    grown = cv2.dilate(mask.astype(np.uint8), _disk(max(int(margin), 1))).astype(bool)
    return grown & ~mask


def sample_points(
    mask: np.ndarray,
    n_pos: int,
    n_neg: int,
    rng: np.random.Generator,
    positive_region: str = "mask",
    interior_fraction: float = 0.5,
    negative_region: str = "outside",
    margin: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Positive points inside the H x W mask, then negative points outside it.

    positive_region: "mask" (uniform over the mask) or "interior" (see `interior_region`).
    negative_region: "outside" (anywhere in the frame off the mask) or "margin" (within
    `margin` pixels of it; falls back to "outside" when that band is empty). A mask that
    fills the frame gets no negatives.
    Returns coords (n x 2 float32, (x, y)) and labels (n int64, 1 then 0).
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("sample_points: the mask is empty")
    if positive_region not in POSITIVE_REGIONS:
        raise ValueError(f"positive_region={positive_region!r}; expected {POSITIVE_REGIONS}")
    if negative_region not in NEGATIVE_REGIONS:
        raise ValueError(f"negative_region={negative_region!r}; expected {NEGATIVE_REGIONS}")
    inside = interior_region(mask, interior_fraction) if positive_region == "interior" else mask
    positives = _pick_pixels(inside, n_pos, rng)
    outside = ~mask
    if negative_region == "margin":
        band = margin_region(mask, margin)
        outside = band if band.any() else outside
    negatives = _pick_pixels(outside, n_neg, rng)
    coords = np.concatenate([positives, negatives], axis=0)
    labels = np.concatenate(
        [np.full(len(positives), LABEL_POSITIVE), np.full(len(negatives), LABEL_NEGATIVE)]
    ).astype(np.int64)
    return coords, labels


def mask_prompt(
    mask: np.ndarray, rng: np.random.Generator, max_jitter: int = 8, logit: float = 8.0
) -> np.ndarray:
    """A logits-like mask prompt from the object's own mask, slightly grown or shrunk.

    The H x W mask (input frame, longest side S) is padded bottom/right to S x S like the
    image, grown or shrunk by a random radius in [-max_jitter, max_jitter] pixels so it is
    not the answer itself, then averaged down to S/4 x S/4 and mapped to [-logit, logit].
    Returns S/4 x S/4 float32.
    """
    side = max(mask.shape)
    square = np.zeros((side, side), dtype=np.uint8)
    square[: mask.shape[0], : mask.shape[1]] = mask
    radius = int(rng.integers(-max_jitter, max_jitter + 1)) if max_jitter > 0 else 0
    if radius > 0:
        square = cv2.dilate(square, _disk(radius))
    elif radius < 0:
        shrunk = cv2.erode(square, _disk(-radius))
        square = shrunk if shrunk.any() else square
    low = side // 4
    fraction = cv2.resize(square.astype(np.float32), (low, low), interpolation=cv2.INTER_AREA)
    return ((2.0 * fraction - 1.0) * logit).astype(np.float32)


def _int_range(value: object, name: str, low: int) -> tuple[int, int]:
    try:
        first, last = (int(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise DataError(f"PromptSampler.{name} = {value!r}; expected [min, max]") from None
    if not low <= first <= last:
        raise DataError(f"PromptSampler.{name} = {value!r}; expected {low} <= min <= max")
    return first, last


@dataclass
class PromptSampler:
    """How one prompt per object is drawn (SAM paper defaults: a point or a box, 0.5 each).

    point_prob, box_prob: relative odds of a point prompt and a box prompt.
    num_points: [min, max] positive points of a point prompt (inclusive, uniform).
    num_negatives: [min, max] negative points added to a point prompt.
    positive_region, interior_fraction: where positives come from (see `sample_points`).
    negative_region, margin_px: where negatives come from (see `sample_points`).
    box_noise_std, box_max_noise: box corner noise (fraction of the side, cap in pixels).
    mask_prompt_prob: chance that an object also gets a mask prompt (see `mask_prompt`).
    mask_prompt_jitter_px, mask_prompt_logit: how that mask prompt is made.
    """

    point_prob: float = 0.5
    box_prob: float = 0.5
    num_points: tuple[int, int] = (1, 1)
    num_negatives: tuple[int, int] = (0, 0)
    positive_region: str = "mask"
    interior_fraction: float = 0.5
    negative_region: str = "outside"
    margin_px: int = 32
    box_noise_std: float = 0.1
    box_max_noise: float = 20.0
    mask_prompt_prob: float = 0.0
    mask_prompt_jitter_px: int = 8
    mask_prompt_logit: float = 8.0

    def __post_init__(self) -> None:
        self.num_points = _int_range(self.num_points, "num_points", 1)
        self.num_negatives = _int_range(self.num_negatives, "num_negatives", 0)
        for name in ("point_prob", "box_prob", "mask_prompt_prob", "box_noise_std"):
            if float(getattr(self, name)) < 0:
                raise DataError(f"PromptSampler.{name} = {getattr(self, name)}; expected >= 0")
        if self.point_prob + self.box_prob <= 0:
            raise DataError("PromptSampler: point_prob + box_prob must be > 0")
        if self.mask_prompt_prob > 1:
            raise DataError(f"PromptSampler.mask_prompt_prob = {self.mask_prompt_prob}; max 1")
        if self.positive_region not in POSITIVE_REGIONS:
            raise DataError(
                f"PromptSampler.positive_region = {self.positive_region!r}; "
                f"expected one of {POSITIVE_REGIONS}"
            )
        if self.negative_region not in NEGATIVE_REGIONS:
            raise DataError(
                f"PromptSampler.negative_region = {self.negative_region!r}; "
                f"expected one of {NEGATIVE_REGIONS}"
            )

    def sample(self, mask: np.ndarray, rng: np.random.Generator) -> Prompt:
        """Draw one prompt for an H x W bool mask in the input frame."""
        mask = np.asarray(mask, dtype=bool)
        use_points = rng.random() * (self.point_prob + self.box_prob) < self.point_prob
        if use_points:
            n_pos = int(rng.integers(self.num_points[0], self.num_points[1] + 1))
            n_neg = int(rng.integers(self.num_negatives[0], self.num_negatives[1] + 1))
            coords, labels = sample_points(
                mask,
                n_pos,
                n_neg,
                rng,
                positive_region=self.positive_region,
                interior_fraction=self.interior_fraction,
                negative_region=self.negative_region,
                margin=self.margin_px,
            )
            kind = PROMPT_ONE_POINT if len(labels) == 1 else PROMPT_POINTS
        else:
            box = sample_box(mask, rng, self.box_noise_std, self.box_max_noise)
            coords = box.reshape(2, 2)
            labels = np.array([LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT], dtype=np.int64)
            kind = PROMPT_BOX
        mask_input = None
        if rng.random() < self.mask_prompt_prob:
            mask_input = mask_prompt(mask, rng, self.mask_prompt_jitter_px, self.mask_prompt_logit)
        return Prompt(
            coords=coords.astype(np.float32), labels=labels, type=kind, mask_input=mask_input
        )

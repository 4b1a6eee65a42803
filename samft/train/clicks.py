"""Correction clicks for the paper's iterative training: one new point per object per round.

After the first prompt, each round looks at where the chosen mask is wrong and adds a point
there: positive (label 1) on a false negative (object pixel the mask missed), negative
(label 0) on a false positive (background pixel the mask covered). Points are in pixel
indices of the masks' frame (x = column, y = row), the convention used across samft; the
prompt encoder adds the half-pixel shift itself.

An object whose mask has no error inside `valid` gets the padding point: label -1 at (0, 0),
which the prompt encoder replaces by its "not a point" embedding, so appending it to the
object's earlier points changes nothing. (Repeating an earlier point instead would make the
prompt depend on the round count.)
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
import torch
from torch import Tensor

PAD_LABEL = -1  # label of a point the prompt encoder must ignore


def _as_bool(name: str, masks: Tensor) -> Tensor:
    """Accept bool or 0/1 integer masks; refuse floats, which may be logits or probabilities."""
    if masks.dtype == torch.bool:
        return masks
    if masks.is_floating_point():
        raise TypeError(
            f"{name} must be a bool mask, got dtype {masks.dtype}; "
            "threshold logits at 0 (or probabilities at 0.5) first"
        )
    return masks != 0


def error_maps(
    pred_masks: Tensor, gt_masks: Tensor, valid: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """False negatives and false positives of each mask, inside `valid`.

    Args:
        pred_masks: P x H x W bool, the chosen predicted masks.
        gt_masks: P x H x W bool, the ground truth.
        valid: P x H x W bool, False on padding; None means all pixels are real.

    Returns:
        (false_negatives, false_positives), each P x H x W bool.
    """
    pred = _as_bool("pred_masks", pred_masks)
    gt = _as_bool("gt_masks", gt_masks)
    if pred.shape != gt.shape or pred.dim() != 3:
        raise ValueError(
            f"pred_masks and gt_masks must both be P x H x W, got {tuple(pred.shape)} "
            f"and {tuple(gt.shape)}"
        )
    fn = gt & ~pred
    fp = pred & ~gt
    if valid is not None:
        if valid.shape != gt.shape:
            raise ValueError(
                f"valid must have the masks' shape {tuple(gt.shape)}, got {tuple(valid.shape)}"
            )
        keep = _as_bool("valid", valid)
        fn = fn & keep
        fp = fp & keep
    return fn, fp


def _sample_random(fn: Tensor, fp: Tensor, generator: torch.Generator | None) -> Tensor:
    """Flat index (P) of one pixel drawn uniformly from each object's errors."""
    errors = (fn | fp).flatten(1)  # P x HW
    has_error = errors.any(dim=1)
    # multinomial needs a positive row sum: give error-free rows uniform weights, then the
    # caller turns those rows into padding points.
    weights = torch.where(has_error[:, None], errors, torch.ones_like(errors)).float()
    sample_device = generator.device if generator is not None else weights.device
    index = torch.multinomial(weights.to(sample_device), 1, generator=generator)
    return index[:, 0].to(fn.device)


def _deepest_point(mask: np.ndarray) -> tuple[float, int]:
    """Distance to the nearest non-mask pixel (or image edge) and flat index of its maximum."""
    padded = np.pad(mask.astype(np.uint8), 1)  # the image edge counts as a boundary
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    index = int(dist.argmax())  # first maximum in raster order
    return float(dist.flat[index]), index


def _sample_center(fn: Tensor, fp: Tensor) -> Tensor:
    """Flat index (P) of the deepest pixel of each object's deeper error region."""
    fn_np = fn.cpu().numpy()
    fp_np = fp.cpu().numpy()
    indices = []
    for fn_mask, fp_mask in zip(fn_np, fp_np, strict=True):
        fn_depth, fn_index = _deepest_point(fn_mask)
        fp_depth, fp_index = _deepest_point(fp_mask)
        indices.append(fn_index if fn_depth >= fp_depth else fp_index)
    return torch.tensor(indices, dtype=torch.long, device=fn.device)


def sample_correction_points(
    pred_masks: Tensor,
    gt_masks: Tensor,
    valid: Tensor | None = None,
    generator: torch.Generator | None = None,
    mode: Literal["random", "center"] = "random",
) -> tuple[Tensor, Tensor]:
    """One correction point per object from the errors of its predicted mask.

    Modes:
        "random": a pixel drawn uniformly from the union of false negatives and false
            positives (vectorised over objects, `torch.multinomial`; the generator, if given,
            must live on the masks' device or on the CPU).
        "center": the error pixel farthest from the error region's boundary, the image edge
            counting as boundary (exact Euclidean distance transform, `cv2.distanceTransform`
            with `DIST_MASK_PRECISE`, on CPU numpy, one object at a time). Of the false
            negatives and the false positives, the region whose deepest pixel is deeper is
            taken (the false negatives on a tie), as in RITM and SAM 2: a wide region is a
            clearer click than a large but thin sliver. Among equally deep pixels the first
            in raster order wins, so this mode is deterministic.

    Args:
        pred_masks: P x H x W bool, the chosen predicted mask of each object.
        gt_masks: P x H x W bool, the ground truth.
        valid: P x H x W bool, False on padding (never sampled); None means all real.
        generator: random source for "random"; None uses torch's global one.
        mode: "random" or "center".

    Returns:
        coords: P x 1 x 2 float, (x, y) = (column, row) in the masks' frame.
        labels: P x 1 long, 1 on a false negative, 0 on a false positive, -1 (padding, at
            (0, 0)) for an object whose mask has no error.
    """
    fn, fp = error_maps(pred_masks, gt_masks, valid)
    num_objects, _, width = fn.shape
    if num_objects == 0:
        return (
            torch.zeros(0, 1, 2, device=fn.device),
            torch.zeros(0, 1, dtype=torch.long, device=fn.device),
        )
    if mode == "random":
        index = _sample_random(fn, fp, generator)
    elif mode == "center":
        index = _sample_center(fn, fp)
    else:
        raise ValueError(f"mode must be 'random' or 'center', got {mode!r}")

    rows = torch.arange(num_objects, device=fn.device)
    is_fn = fn.flatten(1)[rows, index]
    has_error = (fn | fp).flatten(1).any(dim=1)
    labels = torch.where(
        has_error,
        is_fn.long(),  # 1 on a false negative, 0 on a false positive
        torch.full_like(index, PAD_LABEL),
    )
    index = torch.where(has_error, index, torch.zeros_like(index))
    coords = torch.stack([index % width, index // width], dim=-1).float()  # x, y
    return coords[:, None, :], labels[:, None]

"""Instance-segmentation metrics: segmentation accuracy (mSA) as in the DSB 2018 challenge,
micro-sam and stardist. COCO mask AP is in `samft.evaluate.coco_ap`, the threshold search in
`samft.evaluate.threshold_search`, records painted into a label image in
`samft.infer.record_masks`.

Instances come either as a label image (`H x W` ints, 0 background, any other value one
object) or as a stack of boolean masks (`K x H x W`, possibly overlapping).

Matching (elf's `matching`, which micro-sam uses, after stardist): at threshold t a
prediction and a ground-truth object may pair when their IoU is >= t; the pairing is one to
one and maximises the number of such pairs (Hungarian, `linear_sum_assignment`, with the IoU
as tie-breaker). TP is that number, FP = predictions - TP, FN = objects - TP, and
SA(t) = TP / (TP + FP + FN), 0 when TP = 0 (so also 0 for an image with neither predictions
nor objects). mSA is the mean of SA over t = 0.50, 0.55, ..., 0.95. The thresholds are the
exact decimals; elf's `np.arange(0.5, 1.0, 0.05)` makes 0.6 .. 0.95 slightly larger (0.75 is
0.7500000000000002 there), which only matters for an IoU of exactly that value.

Crowd regions (COCO `iscrowd: 1`: objects that were not separated) are neither objects to
find nor background, as in COCO's evaluation: at threshold t, a prediction left unmatched
whose area lies at least t inside the crowd regions (intersection over the prediction's
area, COCO's rule for crowds) is ignored, neither TP nor FP.

Dataset level: the mean over images of each per-image number, as micro-sam averages its
per-image tables (`aggregate`); summed counts and pooled SA are given beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment

SA_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def instance_masks(instances: np.ndarray) -> np.ndarray:
    """A label image (`H x W` ints) or a mask stack (`K x H x W`) -> `K x H x W` bool.

    Label-image objects come in increasing id order.
    """
    instances = np.asarray(instances)
    if instances.ndim == 3:
        return instances.astype(bool, copy=False)
    if instances.ndim != 2:
        raise ValueError(f"expected an H x W label image or K x H x W masks, got {instances.shape}")
    ids = np.unique(instances)
    ids = ids[ids != 0]
    return instances[None] == ids[:, None, None]


def iou_matrix(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """`N_pred x N_gt` float64 IoU between predicted and ground-truth instances.

    Either argument is a label image or a mask stack. Intersections are one sparse product
    of the flattened masks, so memory follows the foreground pixels; an empty pair has IoU 0.
    """
    p, p_shape = _sparse_instances(pred)
    g, g_shape = _sparse_instances(gt)
    if p_shape != g_shape:
        raise ValueError(f"size mismatch: {p_shape} vs {g_shape}")
    inter = (p @ g.T).toarray()
    union = np.asarray(p.sum(axis=1)) + np.asarray(g.sum(axis=1)).T - inter
    return inter / np.maximum(union, 1e-7)


def _sparse_instances(instances: np.ndarray) -> tuple[sparse.csr_matrix, tuple[int, ...]]:
    """Instances as a `K x (H * W)` sparse 0/1 matrix (rows in `instance_masks` order)."""
    instances = np.asarray(instances)
    if instances.ndim == 2:
        flat = instances.ravel()
        pixels = np.flatnonzero(flat)
        ids, rows = np.unique(flat[pixels], return_inverse=True)
        matrix = sparse.csr_matrix(
            (np.ones(pixels.size), (rows.ravel(), pixels)), shape=(ids.size, flat.size)
        )
        return matrix, instances.shape
    masks = instance_masks(instances)
    flat = masks.reshape(masks.shape[0], int(np.prod(masks.shape[1:])))
    return sparse.csr_matrix(flat, dtype=np.float64), masks.shape[1:]


def true_positives(iou: np.ndarray, threshold: float) -> int:
    """Pairs with IoU >= threshold in the best one-to-one matching of an IoU matrix."""
    n_matched = min(iou.shape)
    hits = iou >= threshold
    if n_matched == 0 or not hits.any():
        return 0
    costs = -hits.astype(np.float64) - iou / (2 * n_matched)
    rows, cols = linear_sum_assignment(costs)
    return int(hits[rows, cols].sum())


def instance_scores(
    pred: np.ndarray,
    gt: np.ndarray,
    thresholds: Sequence[float] = SA_THRESHOLDS,
    crowd: np.ndarray | None = None,
) -> dict[str, Any]:
    """Per-image scores of predicted vs ground-truth instances (label images or stacks).

    `crowd`: an `H x W` bool mask of the image's crowd regions (None: none); predictions
    inside them are ignored as the module docstring says.

    Returns `mSA`, `SA50`, `SA75`, `precision50`, `recall50`, `f1_50` (0 when TP = 0),
    `n_pred` (every prediction), `n_gt`, and per threshold lists `thresholds`, `SA`, `TP`,
    `FP` (predictions neither matched nor ignored).
    """
    iou = iou_matrix(pred, gt)
    n_pred, n_gt = iou.shape
    in_crowd = crowd_fractions(pred, crowd) if crowd is not None else np.zeros(n_pred)
    best_iou = iou.max(axis=1) if n_gt else np.zeros(n_pred)

    def counts(t: float) -> tuple[int, int]:
        tp = true_positives(iou, t)
        ignored = int(np.sum((in_crowd >= t) & (best_iou < t)))
        return tp, n_pred - tp - ignored

    def accuracy(tp: int, fp: int) -> float:
        return tp / (tp + fp + n_gt - tp) if tp > 0 else 0.0

    per_t = [counts(t) for t in thresholds]
    (tp50, fp50), (tp75, fp75) = counts(0.5), counts(0.75)
    return {
        "mSA": float(np.mean([accuracy(tp, fp) for tp, fp in per_t])),
        "SA50": accuracy(tp50, fp50),
        "SA75": accuracy(tp75, fp75),
        "precision50": tp50 / (tp50 + fp50) if tp50 > 0 else 0.0,
        "recall50": tp50 / n_gt if tp50 > 0 else 0.0,
        "f1_50": 2 * tp50 / (tp50 + fp50 + n_gt) if tp50 > 0 else 0.0,
        "n_pred": n_pred,
        "n_gt": n_gt,
        "thresholds": [float(t) for t in thresholds],
        "SA": [accuracy(tp, fp) for tp, fp in per_t],
        "TP": [tp for tp, _ in per_t],
        "FP": [fp for _, fp in per_t],
    }


def crowd_fractions(pred: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """Per prediction (rows of `instance_masks(pred)`), the fraction of its area inside
    the `H x W` crowd mask (0 for an empty prediction)."""
    p, shape = _sparse_instances(pred)
    crowd = np.asarray(crowd, dtype=bool)
    if crowd.shape != tuple(shape):
        raise ValueError(f"crowd mask size {crowd.shape} differs from the image's {shape}")
    inside = np.asarray(p @ crowd.ravel().astype(np.float64)).ravel()
    area = np.asarray(p.sum(axis=1)).ravel()
    return inside / np.maximum(area, 1)


def aggregate(per_image: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Dataset scores from `instance_scores` of each image.

    `mSA`, `SA50`, `SA75`, `precision50`, `recall50`, `f1_50`: mean over images (micro-sam's
    convention). `n_pred`, `n_gt`: sums. `pooled_mSA`: SA from TP, FP and FN summed over
    all images at each threshold, then averaged over thresholds. `n_images`.
    """
    if not per_image:
        raise ValueError("aggregate needs at least one image")
    out: dict[str, Any] = {
        key: float(np.mean([scores[key] for scores in per_image]))
        for key in ("mSA", "SA50", "SA75", "precision50", "recall50", "f1_50")
    }
    n_pred = sum(int(s["n_pred"]) for s in per_image)
    n_gt = sum(int(s["n_gt"]) for s in per_image)
    tps = np.sum([s["TP"] for s in per_image], axis=0)
    fps = np.sum([s["FP"] for s in per_image], axis=0)
    pooled = [
        tp / (fp + n_gt) if tp > 0 else 0.0
        for tp, fp in zip(tps.tolist(), fps.tolist(), strict=True)
    ]
    out.update(n_pred=n_pred, n_gt=n_gt, pooled_mSA=float(np.mean(pooled)))
    out["n_images"] = len(per_image)
    return out

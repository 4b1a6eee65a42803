"""Instance-segmentation metrics: segmentation accuracy (mSA) as in the DSB 2018 challenge,
micro-sam and stardist, and COCO mask AP.

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

Dataset level: the mean over images of each per-image number, as micro-sam averages its
per-image tables (`aggregate`); summed counts and pooled SA are given beside it.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage, sparse
from scipy.optimize import linear_sum_assignment

from samft.infer.rle import masks_to_coco, rle_to_coco, rles_to_masks

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
    pred: np.ndarray, gt: np.ndarray, thresholds: Sequence[float] = SA_THRESHOLDS
) -> dict[str, Any]:
    """Per-image scores of predicted vs ground-truth instances (label images or stacks).

    Returns `mSA`, `SA50`, `SA75`, `precision50`, `recall50`, `f1_50` (0 when TP = 0),
    `n_pred`, `n_gt`, and per threshold lists `thresholds`, `SA`, `TP`.
    """
    iou = iou_matrix(pred, gt)
    n_pred, n_gt = iou.shape

    def accuracy(tp: int) -> float:
        return tp / (n_pred + n_gt - tp) if tp > 0 else 0.0

    tps = [true_positives(iou, t) for t in thresholds]
    tp50, tp75 = true_positives(iou, 0.5), true_positives(iou, 0.75)
    return {
        "mSA": float(np.mean([accuracy(tp) for tp in tps])),
        "SA50": accuracy(tp50),
        "SA75": accuracy(tp75),
        "precision50": tp50 / n_pred if tp50 > 0 else 0.0,
        "recall50": tp50 / n_gt if tp50 > 0 else 0.0,
        "f1_50": 2 * tp50 / (n_pred + n_gt) if tp50 > 0 else 0.0,
        "n_pred": n_pred,
        "n_gt": n_gt,
        "thresholds": [float(t) for t in thresholds],
        "SA": [accuracy(tp) for tp in tps],
        "TP": tps,
    }


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
    pooled = [tp / (n_pred + n_gt - tp) if tp > 0 else 0.0 for tp in tps.tolist()]
    out.update(n_pred=n_pred, n_gt=n_gt, pooled_mSA=float(np.mean(pooled)))
    out["n_images"] = len(per_image)
    return out


def records_to_labels(
    records: Sequence[Mapping[str, Any]],
    shape: Sequence[int],
    min_object_size: int = 0,
    with_background: bool = False,
    split_components: bool = False,
) -> np.ndarray:
    """Paint generator records (`output_mode="binary_mask"`) into an `H x W` uint32 label image.

    micro-sam's rule (`mask_data_to_segmentation`): masks by decreasing area, each taking
    only the pixels no larger mask took, skipping masks with `area < min_object_size`; with
    `split_components` every painted label is split into its 4-connected pieces; pieces
    smaller than `min_object_size` are cleared, and with `with_background` so is the largest
    label (often a mask that covers the background). Labels are then renumbered 1..N.
    """
    labels = np.zeros(tuple(int(v) for v in shape[:2]), dtype=np.uint32)
    order = sorted(range(len(records)), key=lambda i: records[i]["area"], reverse=True)
    next_id = 1
    for i in order:
        if records[i]["area"] < min_object_size:
            continue
        mask = segmentation_mask(records[i]["segmentation"]) & (labels == 0)
        labels[mask] = next_id
        next_id += 1
    if split_components:
        pieces, next_id = np.zeros_like(labels), 1
        for label, box in enumerate(ndimage.find_objects(labels), 1):
            if box is not None:
                parts, count = ndimage.label(labels[box] == label)
                pieces[box][parts > 0] = parts[parts > 0] + (next_id - 1)
                next_id += count
        labels = pieces
    ids, sizes = np.unique(labels, return_counts=True)
    drop = ids[sizes < min_object_size]
    if with_background:
        drop = np.append(drop, ids[np.argmax(sizes)])
    labels[np.isin(labels, drop)] = 0
    kept = np.unique(labels)
    kept = kept[kept != 0]
    lookup = np.zeros(next_id, dtype=np.uint32)
    lookup[kept] = np.arange(1, kept.size + 1, dtype=np.uint32)
    return lookup[labels]


def segmentation_mask(segmentation: Any) -> np.ndarray:
    """Any generator segmentation (bool mask, uncompressed or COCO RLE) -> `H x W` bool."""
    if isinstance(segmentation, Mapping):
        if isinstance(segmentation["counts"], list):
            return rles_to_masks([segmentation])[0]
        rle = {"size": list(segmentation["size"]), "counts": segmentation["counts"]}
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("utf-8")
        with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword notice
            warnings.simplefilter("ignore", DeprecationWarning)
            return mask_utils.decode(rle).astype(bool)
    return np.asarray(segmentation, dtype=bool)


def _coco_segmentation(segmentation: Any) -> dict[str, Any]:
    """Any generator segmentation (bool mask, uncompressed or COCO RLE) -> COCO RLE."""
    if isinstance(segmentation, Mapping):
        if isinstance(segmentation["counts"], list):
            return rle_to_coco([segmentation])[0]
        return dict(segmentation)
    return masks_to_coco(np.asarray(segmentation, dtype=bool)[None])[0]


def coco_mask_ap(
    predictions: Sequence[Sequence[Mapping[str, Any]]],
    ground_truths: Sequence[np.ndarray],
    score_key: str = "predicted_iou",
    max_detections: int = 1000,
) -> dict[str, float]:
    """COCO mask AP of generator records against ground-truth instances, via pycocotools.

    Args:
        predictions: per image, the records of `AutomaticMaskGenerator` (any output mode).
        ground_truths: per image, a label image or a mask stack.
        score_key: the record field used as detection score.
        max_detections: detections per image that count (COCO's default of 100 is too few
            for dense images such as nuclei).

    Returns:
        `AP` (IoU 0.50:0.95), `AP50`, `AP75`; NaN when there are no ground-truth objects.
    """
    if len(predictions) != len(ground_truths):
        raise ValueError("one list of records per ground-truth image is needed")
    images, annotations, detections = [], [], []
    for image_id, (records, gt) in enumerate(zip(predictions, ground_truths, strict=True), 1):
        masks = instance_masks(gt)
        images.append({"id": image_id, "height": masks.shape[1], "width": masks.shape[2]})
        masks = masks[masks.any(axis=(1, 2))]  # an empty object can be neither hit nor missed
        for rle, mask in zip(masks_to_coco(masks), masks, strict=True):
            ys, xs = np.nonzero(mask)
            box = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCOeval treats id 0 as "unmatched"
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": int(mask.sum()),
                    "bbox": box,
                    "iscrowd": 0,
                }
            )
        for record in records:
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": _coco_segmentation(record["segmentation"]),
                    "score": float(record[score_key]),
                }
            )
    if not annotations:
        return {"AP": float("nan"), "AP50": float("nan"), "AP75": float("nan")}
    if not detections:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "object"}],
        }
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(detections), iouType="segm")
        evaluation.params.maxDets = [1, 10, int(max_detections)]
        evaluation.evaluate()
        evaluation.accumulate()
    # precision: thresholds x recall points x classes x area ranges x max-dets; area "all"
    # and the largest max-dets, averaged as COCOeval.summarize does (-1 marks "no data")
    precision = evaluation.eval["precision"][:, :, 0, 0, -1]
    thresholds = evaluation.params.iouThrs

    def average(rows: np.ndarray) -> float:
        valid = rows[rows > -1]
        return float(valid.mean()) if valid.size else float("nan")

    return {
        "AP": average(precision),
        "AP50": average(precision[np.isclose(thresholds, 0.5)]),
        "AP75": average(precision[np.isclose(thresholds, 0.75)]),
    }


# ----------------------------------------------------------------------------- grid search
def default_search_values() -> tuple[list[float], list[float]]:
    """micro-sam's default grid: `pred_iou_thresh` 0.6..0.9 and `stability_score_thresh`
    0.6..0.95, both in steps of 0.025."""
    return _steps(0.6, 0.9, 0.025), _steps(0.6, 0.95, 0.025)


def _steps(first: float, last: float, step: float) -> list[float]:
    count = int(round((last - first) / step)) + 1
    return [round(first + i * step, 3) for i in range(count)]


@dataclass
class GridSearchResult:
    """One row per (pred_iou_thresh, stability_score_thresh): the thresholds and the
    dataset scores of `aggregate`; `best` is the row with the highest `criterion`."""

    rows: list[dict[str, Any]]
    best: dict[str, Any]
    criterion: str


def grid_search(
    generator: Any,
    images: Iterable[np.ndarray],
    ground_truths: Iterable[np.ndarray],
    pred_iou_threshs: Sequence[float] | None = None,
    stability_score_threshs: Sequence[float] | None = None,
    criterion: str = "mSA",
    min_object_size: int = 0,
    with_background: bool = True,
    split_components: bool = True,
) -> GridSearchResult:
    """Score every pair of thresholds on a dataset, running the model once per image.

    `generator` is an `AutomaticMaskGenerator`. Each image is proposed once with the
    lowest thresholds of the grid; every cell then filters those candidates and re-runs the
    NMS (`generator.select`), which gives exactly what `generate` would with that cell's
    thresholds. Records become a label image as micro-sam's grid search makes them
    (`records_to_labels` with `with_background` and `split_components`), scored with
    `instance_scores` against the ground truth (label image or mask stack).
    """
    defaults = default_search_values()
    ious = list(pred_iou_threshs) if pred_iou_threshs is not None else defaults[0]
    stabilities = (
        list(stability_score_threshs) if stability_score_threshs is not None else defaults[1]
    )
    cells = list(itertools.product(ious, stabilities))
    per_cell: list[list[dict[str, Any]]] = [[] for _ in cells]
    for image, gt in zip(images, ground_truths, strict=True):
        candidates = generator.propose(image, min(ious), min(stabilities))
        for scores, (iou_thresh, stab_thresh) in zip(per_cell, cells, strict=True):
            records = generator.select(candidates, iou_thresh, stab_thresh)
            labels = records_to_labels(
                records, image.shape, min_object_size, with_background, split_components
            )
            scores.append(instance_scores(labels, gt))
    if not cells or not per_cell[0]:
        raise ValueError("grid_search needs at least one image and one grid cell")
    rows = [
        {"pred_iou_thresh": iou, "stability_score_thresh": stab, **aggregate(scores)}
        for (iou, stab), scores in zip(cells, per_cell, strict=True)
    ]
    best = max(rows, key=lambda row: row[criterion])
    return GridSearchResult(rows=rows, best=best, criterion=criterion)

"""Score the automatic (segment-everything) masks of a SAM checkpoint on a dataset.

Every image of the split is run through `AutomaticMaskGenerator` once, with the lowest
thresholds of the grid; the `pred_iou_thresh` x `stability_score_thresh` grid is then
searched on those candidates (`samft.evaluate.threshold_search`, micro-sam's procedure),
and the best cell's masks are scored against every annotated object of the image:

- `mSA`, `SA50`, `SA75`, `precision50`, `recall50`, `f1_50`, `n_pred`, `n_gt`,
  `pooled_mSA`, `n_images`: `samft.train.instance_metrics` on the label image the records
  make (largest first; the largest label, usually background, cleared; pieces split),
  one-to-one Hungarian matching, averaged over images; equal to the best grid row.
- `AP`, `AP50`, `AP75`: COCO mask AP (pycocotools) of the kept masks themselves
  (overlapping, scored by their predicted IoU), all images pooled.
- `iou_head_mae`: mean over every kept mask of |predicted IoU - its best IoU with any
  ground-truth object|: how well the IoU head, which the thresholds filter on, ranks masks.
- `n_masks`: the generator's masks kept at the chosen thresholds (before painting).
- `pred_iou_thresh`, `stability_score_thresh`: the chosen cell.
- `seconds_per_image`: the generator's proposals (encoder, grid decoding, NMS) of one
  image, mean wall time (the search's filtering is not counted).

The ground truth is every object the dataset's reader gives for an image (no area filter:
small objects count), except COCO crowd regions (`iscrowd: 1`), which are ignored as COCO's
evaluation ignores them (`samft.train.instance_metrics`). Candidates of every image are held
until the search ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from samft.data.readers import build_reader
from samft.evaluate.coco_ap import coco_mask_ap
from samft.evaluate.report import CheckpointSummary, describe_checkpoint
from samft.evaluate.threshold_search import (
    CRITERIA,
    GridSearchResult,
    best_cell,
    cell_scores,
    search_cells,
)
from samft.infer.automatic import CROP_OVERLAP_RATIO, AutomaticMaskGenerator
from samft.infer.record_masks import records_to_labels, segmentation_mask
from samft.model.device import resolve_device
from samft.train.instance_metrics import aggregate, instance_scores, iou_matrix
from samft.weights import load_sam

log = logging.getLogger(__name__)

# micro-sam's label images: the largest label (background) cleared, pieces split
WITH_BACKGROUND = True
SPLIT_COMPONENTS = True


@dataclass
class InstanceResult:
    """One checkpoint's instance scores (`summary.metrics`), its grid and its images."""

    summary: CheckpointSummary
    search: GridSearchResult
    images: list[dict[str, Any]] = field(default_factory=list)


def ground_truth_labels(masks: np.ndarray) -> np.ndarray:
    """`N x H x W` object masks as an `H x W` label image (ids 1..N) when no two overlap
    (the same score, far less memory); the stack itself otherwise."""
    if masks.shape[0] == 0 or masks.sum(axis=0).max() <= 1:
        ids = np.arange(1, masks.shape[0] + 1, dtype=np.int32)
        return (masks * ids[:, None, None]).sum(axis=0, dtype=np.int32)
    return masks


def iou_head_errors(records: Sequence[Mapping[str, Any]], ground_truth: np.ndarray) -> list[float]:
    """|predicted IoU - best IoU with any ground-truth object| of each record."""
    if not records:
        return []
    masks = np.stack([segmentation_mask(r["segmentation"]) for r in records])
    iou = iou_matrix(masks, ground_truth)
    best = iou.max(axis=1) if iou.shape[1] else np.zeros(len(records))
    return [abs(float(r["predicted_iou"]) - float(b)) for r, b in zip(records, best, strict=True)]


def evaluate_automatic(
    checkpoint: str | Path,
    dataset_spec: Mapping[str, Any],
    points_per_side: int = 32,
    points_per_batch: int = 64,
    crop_n_layers: int = 0,
    crop_overlap_ratio: float = CROP_OVERLAP_RATIO,
    crop_n_points_downscale_factor: int = 1,
    pred_iou_threshs: Sequence[float] | None = None,
    stability_score_threshs: Sequence[float] | None = None,
    criterion: str = "mSA",
    min_object_size: int = 0,
    max_images: int | None = None,
    variant: str | None = None,
    device: str = "auto",
    name: str = "data",
    covered_thresh: float = 1.0,
) -> InstanceResult:
    """Search the thresholds on the split and score the best cell (see the module
    docstring for the metrics). `pred_iou_threshs` / `stability_score_threshs`: the grid
    (None: micro-sam's values; one value fixes that threshold). `covered_thresh` < 1 drops
    masks mostly covered by better ones in every cell; it and the crop settings are
    `AutomaticMaskGenerator`'s."""
    if criterion not in CRITERIA:
        raise ValueError(f"instance.criterion={criterion!r}; expected one of {list(CRITERIA)}")
    cells = search_cells(pred_iou_threshs, stability_score_threshs)
    if not cells:
        raise ValueError("instance: the threshold grid is empty; give at least one value each")
    lowest = (min(c[0] for c in cells), min(c[1] for c in cells))
    summary = describe_checkpoint(checkpoint, variant)
    reader = build_reader(dataset_spec, name)
    records = reader.records[: int(max_images)] if max_images is not None else reader.records
    if not records:
        raise ValueError(f"{name}: the split holds no image to segment")
    sam = load_sam(summary.path, variant=summary.variant, image_size=summary.image_size)
    generator = AutomaticMaskGenerator(
        sam.to(resolve_device(device)),
        points_per_side=points_per_side,
        points_per_batch=points_per_batch,
        pred_iou_thresh=lowest[0],
        stability_score_thresh=lowest[1],
        crop_n_layers=crop_n_layers,
        crop_overlap_ratio=crop_overlap_ratio,
        crop_n_points_downscale_factor=crop_n_points_downscale_factor,
        output_mode="uncompressed_rle",
        covered_thresh=covered_thresh,
    )
    log.info(
        "segmenting %d images with %s (%s, %d px), %d x %d points, %d threshold cells",
        len(records), summary.path, summary.variant, summary.image_size,
        points_per_side, points_per_side, len(cells),
    )  # fmt: skip
    proposals, truths, crowds, per_image, seconds = [], [], [], [], []
    for index, record in enumerate(records, 1):
        loaded = reader.load(record, range(len(record.objects)))
        is_crowd = np.array([obj.iscrowd for obj in record.objects], dtype=bool)
        truth = ground_truth_labels(loaded.masks[~is_crowd])
        crowd = loaded.masks[is_crowd].any(axis=0) if is_crowd.any() else None
        start = time.perf_counter()
        candidates = generator.propose(loaded.image)
        seconds.append(time.perf_counter() - start)
        per_image.append(
            cell_scores(
                generator,
                candidates,
                truth,
                loaded.image.shape,
                cells,
                min_object_size,
                WITH_BACKGROUND,
                SPLIT_COMPONENTS,
                crowd,
            )  # fmt: skip
        )
        proposals.append(candidates)
        truths.append(truth)
        crowds.append(crowd)
        log.info("image %d/%d %s: %d candidate masks", index, len(records), record.image_id,
                 len(candidates))  # fmt: skip
    search = best_cell(cells, per_image, criterion)
    chosen = (search.best["pred_iou_thresh"], search.best["stability_score_thresh"])

    kept, scores, errors, images = [], [], [], []
    for record, candidates, truth, crowd in zip(records, proposals, truths, crowds, strict=True):
        masks = generator.select(candidates, *chosen)
        labels = records_to_labels(
            masks, candidates.image_size, min_object_size, WITH_BACKGROUND, SPLIT_COMPONENTS
        )
        score = instance_scores(labels, truth, crowd=crowd)
        kept.append(masks)
        scores.append(score)
        errors += iou_head_errors(masks, truth)
        images.append(
            {
                "image_id": record.image_id,
                "path": str(record.path),
                **{key: score[key] for key in ("mSA", "SA50", "SA75", "n_pred", "n_gt")},
                "n_masks": len(masks),
            }
        )
    metrics = aggregate(scores)
    metrics.update(coco_mask_ap(kept, truths, crowds=crowds))
    metrics["iou_head_mae"] = float(np.mean(errors)) if errors else float("nan")
    metrics["n_masks"] = sum(len(masks) for masks in kept)
    metrics["pred_iou_thresh"], metrics["stability_score_thresh"] = chosen
    metrics["seconds_per_image"] = float(np.mean(seconds))
    summary.metrics = metrics
    return InstanceResult(summary=summary, search=search, images=images)

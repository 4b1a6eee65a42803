"""Score a checkpoint's instance head on a dataset, as `samft.evaluate.automatic` scores
the point grid, so the two sit side by side in `samft eval mode=instance`.

Every image goes through the encoder and the head once (`HeadInstanceSegmenter.maps`,
timed; SAM and SAM 2 alike); the watershed's `foreground_thresh` x `center_thresh` x
`boundary_thresh` x `min_size` grid is then searched on those maps (the best mean
`criterion` over images; each cell's watershed runs once, its instances then filtered by
each `min_size`), and the best cell's instances are scored against every annotated object
of the image:

- `mSA`, `SA50`, `SA75`, `precision50`, `recall50`, `f1_50`, `n_pred`, `n_gt`,
  `pooled_mSA`, `n_images`: `samft.train.instance_metrics` on the watershed's label image.
- `AP`, `AP50`, `AP75`: COCO mask AP of the instances, scored by their mean foreground
  probability.
- `n_masks`: the instances found; `foreground_thresh`, `center_thresh`,
  `boundary_thresh`, `min_size`: the chosen cell.
- `seconds_per_image`: encoder + head + watershed at the chosen cell, mean wall time.

`pred_iou_thresh`, `stability_score_thresh` and `iou_head_mae` (the grid's) are None.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from samft.data.readers import build_reader
from samft.evaluate.automatic import InstanceResult, ground_truth_labels
from samft.evaluate.coco_ap import coco_mask_ap
from samft.evaluate.report import describe_checkpoint
from samft.evaluate.threshold_search import CRITERIA, GridSearchResult
from samft.infer.head_segment import HeadInstanceSegmenter, instance_records
from samft.infer.instance_watershed import relabel, seeded_watershed
from samft.model.device import resolve_device
from samft.train.instance_metrics import aggregate, instance_scores
from samft.weights import load_instance_head, load_sam

log = logging.getLogger(__name__)

HEAD_THRESHOLDS = ("foreground_thresh", "center_thresh", "boundary_thresh")
DEFAULT_VALUES = (0.5,)  # each threshold's search values when none are given


def evaluate_head(
    checkpoint: str | Path,
    dataset_spec: Mapping[str, Any],
    foreground_threshs: Sequence[float] | None = None,
    center_threshs: Sequence[float] | None = None,
    boundary_threshs: Sequence[float] | None = None,
    min_sizes: Sequence[int] | None = None,
    criterion: str = "mSA",
    max_images: int | None = None,
    variant: str | None = None,
    device: str = "auto",
    name: str = "data",
) -> InstanceResult:
    """Search the watershed's thresholds on the split and score the best cell (see the
    module docstring). Each `*_threshs` is the list of values searched (None: 0.5);
    `min_sizes` the smallest instance sizes searched, in pixels of the original image
    (None: 0, every instance kept)."""
    if criterion not in CRITERIA:
        raise ValueError(f"instance.criterion={criterion!r}; expected one of {list(CRITERIA)}")
    cells = list(
        itertools.product(
            *(list(v) if v else list(DEFAULT_VALUES) for v in (
                foreground_threshs, center_threshs, boundary_threshs
            ))
        )
    )  # fmt: skip
    sizes = [int(v) for v in min_sizes] if min_sizes else [0]
    if min(sizes) < 0:
        raise ValueError(f"instance.min_sizes={sizes}: sizes are pixel counts, >= 0")
    summary = describe_checkpoint(checkpoint, variant)
    head = load_instance_head(summary.path)
    if head is None:
        raise ValueError(f"checkpoint={checkpoint} holds no instance head to score")
    reader = build_reader(dataset_spec, name)
    records = reader.records[: int(max_images)] if max_images is not None else reader.records
    if not records:
        raise ValueError(f"{name}: the split holds no image to segment")
    sam = load_sam(summary.path, variant=summary.variant, image_size=summary.image_size)
    segmenter = HeadInstanceSegmenter(sam.to(resolve_device(device)), head)
    log.info("instance head of %s on %d images, %d threshold cells", summary.path,
             len(records), len(cells) * len(sizes))  # fmt: skip
    # one list of per-image scores for each (cell, min_size), cells outer
    maps, truths, seconds, per_cell = [], [], [], [[] for _ in range(len(cells) * len(sizes))]
    for record in records:
        loaded = reader.load(record, range(len(record.objects)))
        start = time.perf_counter()
        image_maps = segmenter.maps(loaded.image)
        seconds.append(time.perf_counter() - start)
        truth = ground_truth_labels(loaded.masks)
        for index, cell in enumerate(cells):
            flooded = seeded_watershed(*image_maps, *cell)
            for offset, size in enumerate(sizes):
                labels = relabel(flooded, size) if size else flooded
                per_cell[index * len(sizes) + offset].append(instance_scores(labels, truth))
        maps.append(image_maps)
        truths.append(truth)
    keys = (*HEAD_THRESHOLDS, "min_size")
    rows = [
        {**dict(zip(keys, (*cell, size), strict=True)), **_plain(aggregate(scores))}
        for (cell, size), scores in zip(itertools.product(cells, sizes), per_cell, strict=True)
    ]
    best = max(rows, key=lambda row: row[criterion])
    chosen, min_size = tuple(best[key] for key in HEAD_THRESHOLDS), int(best["min_size"])

    kept, scores, images = [], [], []
    for index, (record, image_maps, truth) in enumerate(zip(records, maps, truths, strict=True)):
        start = time.perf_counter()
        labels = seeded_watershed(*image_maps, *chosen, min_size=min_size)
        seconds[index] += time.perf_counter() - start
        score = instance_scores(labels, truth)
        found = instance_records(labels, image_maps)
        for item in found:
            item["predicted_iou"] = item["score"]  # the AP's ranking key
        kept.append(found)
        scores.append(score)
        images.append(
            {
                "image_id": record.image_id,
                "path": str(record.path),
                **{key: score[key] for key in ("mSA", "SA50", "SA75", "n_pred", "n_gt")},
                "seconds": seconds[index],
            }
        )
    metrics = aggregate(scores)
    metrics.update(coco_mask_ap(kept, truths))
    metrics["n_masks"] = sum(len(found) for found in kept)
    metrics.update(dict(zip(HEAD_THRESHOLDS, chosen, strict=True)), min_size=min_size)
    metrics["seconds_per_image"] = float(np.mean(seconds))
    metrics.update(pred_iou_thresh=None, stability_score_thresh=None, iou_head_mae=None)
    summary.kind = f"{summary.kind}, instance head"
    summary.metrics = metrics
    search = GridSearchResult(rows=rows, best=best, criterion=criterion)
    return InstanceResult(summary=summary, search=search, images=images)


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if isinstance(v, (int, float))}

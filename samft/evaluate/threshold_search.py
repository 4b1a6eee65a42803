"""Choose the automatic generator's thresholds on a dataset: micro-sam's grid search over
`pred_iou_thresh` x `stability_score_thresh`, each image run through the model once.

Each image is proposed once with the lowest thresholds of the grid; every cell then filters
those candidates and re-runs the NMS (`generator.select`), which gives exactly what
`generate` would with that cell's thresholds. Records become a label image as micro-sam's
grid search makes them (`records_to_labels` with `with_background` and
`split_components`), scored with `instance_scores` against the ground truth.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from samft.infer.record_masks import records_to_labels
from samft.train.instance_metrics import aggregate, instance_scores

Cell = tuple[float, float]  # (pred_iou_thresh, stability_score_thresh)
# the dataset scores of `aggregate` a search may maximise
CRITERIA = ("mSA", "SA50", "SA75", "precision50", "recall50", "f1_50", "pooled_mSA")


def default_search_values() -> tuple[list[float], list[float]]:
    """micro-sam's default grid: `pred_iou_thresh` 0.6..0.9 and `stability_score_thresh`
    0.6..0.95, both in steps of 0.025."""
    return _steps(0.6, 0.9, 0.025), _steps(0.6, 0.95, 0.025)


def _steps(first: float, last: float, step: float) -> list[float]:
    count = int(round((last - first) / step)) + 1
    return [round(first + i * step, 3) for i in range(count)]


def search_cells(
    pred_iou_threshs: Sequence[float] | None = None,
    stability_score_threshs: Sequence[float] | None = None,
) -> list[Cell]:
    """Every (pred_iou_thresh, stability_score_thresh) pair; None: micro-sam's values."""
    defaults = default_search_values()
    ious = list(pred_iou_threshs) if pred_iou_threshs is not None else defaults[0]
    stabilities = (
        list(stability_score_threshs) if stability_score_threshs is not None else defaults[1]
    )
    return list(itertools.product(ious, stabilities))


@dataclass
class GridSearchResult:
    """One row per (pred_iou_thresh, stability_score_thresh): the thresholds and the
    dataset scores of `aggregate`; `best` is the row with the highest `criterion`."""

    rows: list[dict[str, Any]]
    best: dict[str, Any]
    criterion: str


def cell_scores(
    generator: Any,
    candidates: Any,
    ground_truth: np.ndarray,
    shape: Sequence[int],
    cells: Sequence[Cell],
    min_object_size: int = 0,
    with_background: bool = True,
    split_components: bool = True,
    crowd: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """`instance_scores` of one image's candidates (from `generator.propose`, image of
    `shape` H x W) at every cell, in `cells` order; `crowd`: the image's crowd regions."""
    scores = []
    for iou_thresh, stab_thresh in cells:
        records = generator.select(candidates, iou_thresh, stab_thresh)
        labels = records_to_labels(
            records, shape, min_object_size, with_background, split_components
        )
        scores.append(instance_scores(labels, ground_truth, crowd=crowd))
    return scores


def best_cell(
    cells: Sequence[Cell],
    per_image: Sequence[Sequence[Mapping[str, Any]]],
    criterion: str = "mSA",
) -> GridSearchResult:
    """Dataset rows from per-image `cell_scores` (one list per image) and the best cell
    (the first of equals, in `cells` order)."""
    if not cells or not per_image:
        raise ValueError("grid_search needs at least one image and one grid cell")
    rows = [
        {
            "pred_iou_thresh": iou,
            "stability_score_thresh": stab,
            **aggregate([image[index] for image in per_image]),
        }
        for index, (iou, stab) in enumerate(cells)
    ]
    best = max(rows, key=lambda row: row[criterion])
    return GridSearchResult(rows=rows, best=best, criterion=criterion)


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

    `generator` is an `AutomaticMaskGenerator`; ground truths are label images or mask
    stacks. None for a threshold list: micro-sam's values (`default_search_values`).
    """
    cells = search_cells(pred_iou_threshs, stability_score_threshs)
    lowest = (min(c[0] for c in cells), min(c[1] for c in cells)) if cells else (0.0, 0.0)
    per_image = []
    for image, gt in zip(images, ground_truths, strict=True):
        candidates = generator.propose(image, *lowest)
        per_image.append(
            cell_scores(
                generator,
                candidates,
                gt,
                image.shape,
                cells,
                min_object_size,
                with_background,
                split_components,
            )
        )
    return best_cell(cells, per_image, criterion)

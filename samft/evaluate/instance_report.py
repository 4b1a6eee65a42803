"""The instance-mode (segment-everything) table and JSON report: A, B and B - A for every
metric, the chosen thresholds beside them, and each checkpoint's grid and images."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from samft.evaluate.automatic import InstanceResult
from samft.evaluate.report import differences

TABLE_ORDER = (
    "mSA",
    "SA50",
    "SA75",
    "precision50",
    "recall50",
    "f1_50",
    "AP",
    "AP50",
    "AP75",
    "pooled_mSA",
    "n_pred",
    "n_gt",
    "n_masks",
    "n_images",
    "pred_iou_thresh",
    "stability_score_thresh",
    "iou_head_mae",
    "foreground_thresh",
    "center_thresh",
    "boundary_thresh",
    "min_size",
    "seconds_per_image",
)
COUNTS = ("n_pred", "n_gt", "n_masks", "n_images", "min_size")
THRESHOLDS = ("pred_iou_thresh", "stability_score_thresh")
HEAD_THRESHOLDS = ("foreground_thresh", "center_thresh", "boundary_thresh")


def _fmt(name: str, value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    digits = 0 if name in COUNTS else 3 if name in (*THRESHOLDS, *HEAD_THRESHOLDS) else 4
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_instance_table(results: Sequence[InstanceResult]) -> str:
    """One row per metric, one column per checkpoint, and B-A for two."""
    two = len(results) == 2
    labels = ["A", "B"] if two else ["value"]
    header = ["metric", *labels] + (["B-A"] if two else [])
    rows = []
    for name in TABLE_ORDER:
        values = [r.summary.metrics.get(name) for r in results]
        row = [name] + [_fmt(name, v) for v in values]
        if two:
            a, b = values
            row.append(_fmt(name, None if a is None or b is None else b - a, signed=True))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([cells[0].ljust(widths[0]), *rest])

    described = [
        f"{r.summary.path} ({r.summary.kind}, {r.summary.variant}, {r.summary.image_size} px)"
        for r in results
    ]
    legend = [f"{a}: {d}" for a, d in zip(labels, described, strict=True)] if two else described
    rule = "-" * len(line(header))
    return "\n".join([*legend, rule, line(header), rule, *map(line, rows), rule])


def instance_notes(
    settings: Mapping[str, Any], source: str, kinds: Sequence[str] = ("grid",)
) -> str:
    """What the instance table's numbers are; `kinds`: the generators scored ("grid",
    "head")."""
    lines = []
    if "grid" in kinds:
        cells = settings["grid_cells"]
        lines.append(
            f"automatic masks: {settings['points_per_side']} x {settings['points_per_side']} "
            f"point grid, crop_n_layers={settings['crop_n_layers']}; thresholds chosen by "
            f"{settings['criterion']} over {cells} cell(s) of pred_iou_thresh x "
            "stability_score_thresh on this split (so the scores are optimistic for it)."
        )
    if "head" in kinds:
        lines.append(
            "instance head: one encoder and head pass an image, then a seeded watershed; its "
            f"foreground/center/boundary thresholds and min_size (pixels) chosen by "
            f"{settings['criterion']} over the values given (one value each: fixed, no "
            "search) on this split. AP ranks its "
            "instances by their mean foreground probability."
        )
    lines.append(
        "mSA: mean over IoU 0.50:0.05:0.95 of TP / (TP + FP + FN), one-to-one Hungarian "
        "matching, per image then averaged; SA50/SA75, precision50/recall50 at one IoU; "
        "n_pred / n_gt: objects predicted (label image) / annotated. AP: COCO mask AP "
        "(pycocotools) of the kept masks scored by predicted IoU. iou_head_mae: mean "
        "|predicted IoU - best IoU with any object| over kept masks. seconds_per_image: wall "
        "time an image (grid: its proposals; head: encoder, head and watershed)."
    )
    wrapped = [textwrap.fill(text, width=100, subsequent_indent="  ") for text in lines]
    return "\n".join([f"data: {source}", *wrapped])


def build_instance_report(
    results: Sequence[InstanceResult], settings: Mapping[str, Any]
) -> dict[str, Any]:
    """The JSON report: settings, per checkpoint its metrics, grid rows and images, and
    B - A for two."""
    report: dict[str, Any] = {
        "mode": "instance",
        "settings": dict(settings),
        "checkpoints": [
            {
                "path": r.summary.path,
                "kind": r.summary.kind,
                "variant": r.summary.variant,
                "image_size": r.summary.image_size,
                "metrics": r.summary.metrics,
                "chosen_thresholds": {
                    key: r.summary.metrics[key]
                    for key in (*THRESHOLDS, *HEAD_THRESHOLDS)
                    if r.summary.metrics.get(key) is not None
                },
                "grid_search": {"criterion": r.search.criterion, "rows": r.search.rows},
                "images": r.images,
            }
            for r in results
        ],
    }
    if len(results) == 2:
        a, b = (r.summary.metrics for r in results)
        report["difference_b_minus_a"] = differences(
            {k: v for k, v in a.items() if v is not None},
            {k: v for k, v in b.items() if v is not None},
        )
    return report

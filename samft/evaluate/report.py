"""What was evaluated and how it scored: checkpoint summaries, the side-by-side table
(A, B and B - A for every metric) and the JSON report."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samft.weights.known import resolve_checkpoint
from samft.weights.lightning import checkpoint_kind, read_lightning_info
from samft.weights.load import read_sam_state_dict
from samft.weights.shapes import infer_image_size

TABLE_ORDER = (
    "miou",
    "dice",
    "miou/one_point",
    "miou/points",
    "miou/box",
    "dice/one_point",
    "dice/points",
    "dice/box",
    "miou/click_1",
    "miou/click_3",
    "miou/click_5",
    "dice/click_1",
    "dice/click_3",
    "dice/click_5",
    "miou/small",
    "miou/medium",
    "miou/large",
    "dice/small",
    "dice/medium",
    "dice/large",
    "iou_head_mae",
    "loss",
    "num_objects",
    "num_prompts",
)


@dataclass
class CheckpointSummary:
    """What was evaluated: the file, its kind, architecture and input size."""

    path: str
    kind: str
    variant: str
    image_size: int
    metrics: dict[str, float] = field(default_factory=dict)


def describe_checkpoint(path: str | Path, variant: str | None = None) -> CheckpointSummary:
    """Kind, variant and input size of a checkpoint, with errors that name the file.

    The input size of a Lightning checkpoint is the one it was trained at (its saved
    `model.image_size`), otherwise the size its position embedding was saved for.
    """
    path = resolve_checkpoint(path)
    state_dict, found = read_sam_state_dict(path, variant)
    size = infer_image_size(state_dict)
    info = read_lightning_info(path)
    if info is None:
        return CheckpointSummary(str(path), checkpoint_kind(path), found, size)
    saved = (info["hyper_parameters"].get("model") or {}).get("image_size")
    return CheckpointSummary(str(path), "lightning", found, int(saved) if saved else size)


def metric_names(summaries: Sequence[CheckpointSummary]) -> list[str]:
    """Every metric any summary has, in table order."""
    present = set().union(*(s.metrics for s in summaries))
    ordered = [name for name in TABLE_ORDER if name in present]
    return ordered + sorted(present - set(ordered))


def differences(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    """B - A for every metric both have."""
    return {key: b[key] - a[key] for key in a if key in b}


def format_table(summaries: Sequence[CheckpointSummary]) -> str:
    """A plain-text table: one row per metric, one column per checkpoint (+ B-A for two)."""
    labels = ["A", "B"] if len(summaries) == 2 else [str(i + 1) for i in range(len(summaries))]
    if len(summaries) == 1:
        labels = ["value"]
    names = metric_names(summaries)
    header = ["metric", *labels] + (["B-A"] if len(summaries) == 2 else [])
    rows = []
    for name in names:
        values = [s.metrics.get(name) for s in summaries]
        row = [name] + [_fmt(name, v) for v in values]
        if len(summaries) == 2:
            a, b = values
            row.append(_fmt(name, None if a is None or b is None else b - a, signed=True))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    described = [f"{s.path} ({s.kind}, {s.variant}, {s.image_size} px)" for s in summaries]
    if len(summaries) == 1:
        legend = described
    else:
        legend = [f"{label}: {text}" for label, text in zip(labels, described, strict=True)]
    rule = "-" * len(line(header))
    return "\n".join([*legend, rule, line(header), rule, *map(line, rows), rule])


def _fmt(name: str, value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if name in ("num_objects", "num_prompts"):
        return f"{value:+.0f}" if signed else f"{value:.0f}"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def build_report(
    summaries: Sequence[CheckpointSummary], settings: Mapping[str, Any]
) -> dict[str, Any]:
    """The JSON report: settings, one entry per checkpoint, and B - A for two."""
    report: dict[str, Any] = {
        "settings": dict(settings),
        "checkpoints": [
            {
                "path": s.path,
                "kind": s.kind,
                "variant": s.variant,
                "image_size": s.image_size,
                "metrics": s.metrics,
            }
            for s in summaries
        ],
    }
    if len(summaries) == 2:
        report["difference_b_minus_a"] = differences(summaries[0].metrics, summaries[1].metrics)
    return report

"""What `samft train` prints at the end: where everything is, how the run went against its
zero-shot start, and the commands that come next."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

SUMMARY_METRICS = ("val/miou", "val/dice", "val/miou/one_point", "val/miou/box", "val/miou/click_3")


def _fmt(value: float | None) -> str:
    return "  -  " if value is None or not math.isfinite(value) else f"{value:.3f}"


def run_summary(
    output_dir: Path,
    baseline: Mapping[str, float] | None,
    final: Mapping[str, float],
    best_checkpoint: str | None,
    start_checkpoint: str | None,
) -> str:
    """Lines: the run folder, the checkpoints, zero-shot -> final for the main metrics, and
    the eval / export commands for this run (the start checkpoint against the best; eval
    scores the run's own validation data when given no data)."""
    checkpoints = Path(output_dir) / "checkpoints"
    best = best_checkpoint or str(checkpoints / "last.ckpt")
    start = start_checkpoint or str(checkpoints / "initial.pth")
    lines = [
        f"run folder:       {output_dir}",
        f"best checkpoint:  {best}",
        f"last checkpoint:  {checkpoints / 'last.ckpt'}",
        "validation              zero-shot -> final",
    ]
    for name in SUMMARY_METRICS:
        if name in final or (baseline and name in baseline):
            before = (baseline or {}).get(name)
            lines.append(f"  {name:<20} {_fmt(before)} -> {_fmt(final.get(name))}")
    lines += [
        "next:",
        f"  python -m samft eval checkpoint=[{start},{best}]",
        f"  python -m samft export checkpoint={best} output=exports/{Path(output_dir).parent.name}",
    ]
    return "\n".join(lines)

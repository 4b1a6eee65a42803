"""Running `python -m samft` as a user does, on a small generated demo dataset: shared by
the command tests (pytest puts this folder on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def demo_overrides(data: Path, out: Path, *extra: str) -> list[str]:
    """`train +experiment=demo` on 8 + 4 generated images in `data`, run folder `out`,
    CSV logging only, one validation click."""
    return [
        "train",
        "+experiment=demo",
        "logger=csv",
        f"hydra.run.dir={out}",
        f"generate_dataset.root={data}",
        "generate_dataset.num_train=8",
        "generate_dataset.num_val=4",
        f"data.train.annotations={data}/annotations_train.json",
        f"data.train.images={data}/images",
        f"data.val.annotations={data}/annotations_val.json",
        f"data.val.images={data}/images",
        "data.batch_size=2",
        "interactive.val_clicks=[1]",
        "trainer.enable_progress_bar=false",
        *extra,
    ]


def run_samft(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """`python -m samft ARGS` in `cwd`, output captured, W&B offline."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    env.pop("SAMFT_COMMAND", None)
    return subprocess.run(
        [sys.executable, "-m", "samft", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        **kwargs,
    )

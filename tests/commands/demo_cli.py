"""Running `python -m samft` as a user does, on a small generated demo dataset: shared by
the command tests (pytest puts this folder on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lightning import Callback


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
    here = str(Path(__file__).parent)  # so a run can load this file's test callbacks
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "PYTHONPATH": path}
    env.pop("SAMFT_COMMAND", None)
    return subprocess.run(
        [sys.executable, "-m", "samft", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        **kwargs,
    )


class SignalSelf(Callback):
    """A run that signals itself at a chosen point (`+callbacks.x._target_=demo_cli.SignalSelf`,
    with `PYTHONPATH` holding this folder): a stop signal lands in a known phase, every time.

    `phase`: "validate" (the zero-shot validation before training, first batch), "fit"
    (training, once `global_step` reaches `step`) or "fit_validation" (the first validation
    inside fit). `times`: how often the signal is sent at that point (2: a second Ctrl-C).
    """

    def __init__(self, signum: int, phase: str, step: int = 2, times: int = 1) -> None:
        self.signum, self.phase, self.step, self.times = signum, phase, step, times
        self.sent = False

    def _send(self) -> None:
        if not self.sent:
            self.sent = True
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)

    def on_validation_batch_start(self, trainer, *args, **kwargs) -> None:
        when = (self.phase, trainer.state.fn)
        if when in (("validate", "validate"), ("fit_validation", "fit")) and not (
            trainer.sanity_checking
        ):
            self._send()

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        if self.phase == "fit" and trainer.global_step >= self.step:
            self._send()


def signal_self(signum: int, phase: str, **options) -> list[str]:
    """The overrides that add `SignalSelf` to a demo run."""
    words = [
        "+callbacks.signal_self._target_=demo_cli.SignalSelf",
        f"+callbacks.signal_self.signum={int(signum)}",
        f"+callbacks.signal_self.phase={phase}",
    ]
    return words + [f"+callbacks.signal_self.{k}={v}" for k, v in options.items()]

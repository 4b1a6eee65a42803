"""Running `python -m samft` as a user does, on a small generated demo dataset: shared by
the command tests (pytest puts this folder on sys.path)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
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


HERE = Path(__file__).parent
CHECKOUT = HERE.parents[1]  # the samft these tests test, whatever the venv has installed


def samft_env() -> dict[str, str]:
    """The environment of a `python -m samft` child: this checkout's samft first on its
    path (not another one the venv may have installed in editable mode), then this folder
    (so a run can load this file's test callbacks); unbuffered, W&B offline."""
    paths = (str(CHECKOUT), str(HERE), os.environ.get("PYTHONPATH"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.pop("SAMFT_COMMAND", None)
    return env


def run_samft(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """`python -m samft ARGS` in `cwd`, output captured, W&B offline."""
    return subprocess.run(
        [sys.executable, "-m", "samft", *args],
        cwd=cwd,
        env=samft_env(),
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


def stop_when_it_says(
    args: list[str], cwd: Path, said: str, signum: int = signal.SIGTERM
) -> tuple[int, str]:
    """Run `python -m samft ARGS` in `cwd`, send it `signum` as soon as a line of its output
    contains `said` (a progress line: the command is then busy, never a guessed sleep), and
    return its exit code and all it printed. A child that ends before saying it fails."""
    with subprocess.Popen(
        [sys.executable, "-m", "samft", *args],
        cwd=cwd,
        env=samft_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if said in line:
                proc.send_signal(signum)
                break
        else:
            proc.wait(timeout=60)
            raise AssertionError(f"never said {said!r}:\n" + "".join(lines)[-3000:])
        watchdog = threading.Timer(120, proc.kill)  # a child that hangs ends, and fails
        watchdog.start()
        try:
            lines.append(proc.stdout.read())
            return proc.wait(), "".join(lines)
        finally:
            watchdog.cancel()


def signal_self(signum: int, phase: str, **options) -> list[str]:
    """The overrides that add `SignalSelf` to a demo run."""
    words = [
        "+callbacks.signal_self._target_=demo_cli.SignalSelf",
        f"+callbacks.signal_self.signum={int(signum)}",
        f"+callbacks.signal_self.phase={phase}",
    ]
    return words + [f"+callbacks.signal_self.{k}={v}" for k, v in options.items()]


class FailOnRank(Callback):
    """A run whose process of global rank `rank` raises a samft user error (`DataError`,
    exit 2) at training step `step` (`+callbacks.x._target_=demo_cli.FailOnRank`): an error
    on one rank of a DDP run, every time at the same point."""

    def __init__(self, rank: int = 1, step: int = 1) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, *args, **kwargs) -> None:
        from samft.data.errors import DataError

        if trainer.global_rank == self.rank and trainer.global_step >= self.step:
            raise DataError(f"image broken.png on rank {self.rank}: cannot be read (a test)")

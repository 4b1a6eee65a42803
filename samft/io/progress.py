"""Progress as log lines: items done, elapsed time and the time left, for runs whose output
is a log file, CI or `nohup` (where no progress bar shows).

`ProgressLines` is plain (`update(done)`), so any loop can use it; `TestProgress` feeds it
from Lightning's test loop (`samft eval`).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class ProgressLines:
    """Logs `<what>: done/total <unit>, <elapsed> elapsed, ~<left> left` at most every
    `every_s` seconds, and always for the last item."""

    def __init__(self, what: str, total: int, unit: str = "images", every_s: float = 10.0) -> None:
        self.what, self.total, self.unit, self.every_s = what, int(total), unit, every_s
        self.start = time.monotonic()
        self.last_line = -float("inf")

    def update(self, done: int) -> str | None:
        """Record `done` items finished; returns the line logged, if one was."""
        now = time.monotonic()
        if done < self.total and now - self.last_line < self.every_s:
            return None
        self.last_line = now
        elapsed = now - self.start
        line = f"{self.what}: {done}/{self.total} {self.unit}, {_duration(elapsed)} elapsed"
        if 0 < done < self.total:
            line += f", ~{_duration(elapsed / done * (self.total - done))} left"
        log.info(line)
        return line


def off_terminal() -> bool:
    """True when stderr is not a terminal (a log file, CI, nohup): no progress bar shows."""
    return not sys.stderr.isatty()


class TestProgress(L.Callback):
    """Progress lines for `trainer.test`, counting images (`images_per_batch` a batch)."""

    def __init__(self, what: str, total_images: int, images_per_batch: int) -> None:
        self.what, self.total, self.per_batch = what, int(total_images), int(images_per_batch)
        self.lines: ProgressLines | None = None

    def on_test_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.lines = ProgressLines(self.what, self.total)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.lines is not None:
            self.lines.update(min(self.total, (batch_idx + 1) * self.per_batch))

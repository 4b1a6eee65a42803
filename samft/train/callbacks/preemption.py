"""Save `last.ckpt` when the run is told to stop (SIGTERM, SIGINT, SIGUSR1), then fail.

Lightning already turns SIGTERM into a clean stop: its handler sets
`trainer.received_sigterm`, the loops finish the current batch, broadcast the stop to every
rank and raise `SIGTERMException` (a `SystemExit` whose code is 0). `SaveOnSignal` routes
SIGINT and SIGUSR1 (SLURM's `--signal=SIGUSR1@90` warning) through the same flag, so the
stop always lands between two optimizer steps, and on that exception writes
`<dirpath>/last.ckpt` on every rank (Lightning's `save_checkpoint` is collective).
`samft train` then exits with 128 + the signal number and writes no final metrics.

A handler already installed for SIGUSR1 (Lightning's SLURM auto-requeue: it saves an
`hpc_ckpt_*.ckpt` and requeues the job) is called first, then the run stops as above.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


class SaveOnSignal(L.Callback):
    """On a stop signal, finish the step, save `dirpath/filename` and stop the run."""

    def __init__(self, dirpath: str, filename: str = "last.ckpt", signals: Any = SIGNALS) -> None:
        self.path = Path(dirpath) / filename
        self.signals = [getattr(signal, name) for name in signals if hasattr(signal, name)]
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._trainer: L.Trainer | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning registered its SIGTERM (and SLURM SIGUSR1) handlers: chain them
        self._trainer = trainer
        for signum in self.signals:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook's worker)
                return

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.received is None
        if signum == signal.SIGINT and not first:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        self.received = signum if first else self.received
        previous = self._previous.get(signum)
        if signum != signal.SIGINT and callable(previous):
            previous(signum, frame)  # Lightning's: kills DDP children, SLURM requeue
        if first:
            log.warning(
                "received %s: stopping after the current step, saving %s",
                signal.Signals(signum).name,
                self.path,
            )
        trainer = self._trainer
        if trainer is not None:
            trainer._signal_connector.received_sigterm = True  # the loops' own stop flag

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        if self.received is None:  # a SIGTERM that reached Lightning's handler only
            self.received = int(signal.SIGTERM)
        trainer.save_checkpoint(self.path)
        if trainer.is_global_zero:
            log.warning("saved %s at step %d", self.path, trainer.global_step)

    def teardown(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        for signum, previous in self._previous.items():
            if previous is not None:
                signal.signal(signum, previous)
        self._previous.clear()
        self._trainer = None

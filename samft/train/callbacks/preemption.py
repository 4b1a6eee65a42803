"""Save `last.ckpt` when the run is told to stop (SIGTERM, SIGINT, SIGUSR1), then fail.

Lightning already turns SIGTERM into a clean stop: its handler sets
`trainer.received_sigterm`, the loops finish the current batch, broadcast the stop to every
rank and raise `SIGTERMException` (a `SystemExit` whose code is 0). `SaveOnSignal` routes
SIGINT and SIGUSR1 (SLURM's `--signal=SIGUSR1@90` warning) through the same flag, so the
stop always lands between two optimizer steps, and on that exception writes
`<dirpath>/last.ckpt` on every rank (Lightning's `save_checkpoint` is collective).
`samft train` then exits with 128 + the signal number and writes no final metrics.

A stop that lands on an epoch's last batch is felt inside the validation that follows it
(Lightning stops there after the validation batch in flight). Lightning would read the saved
loop state as "stopped after that validation" and skip it on resume, so its rows and its best
checkpoint would be lost; the checkpoint saved here marks that validation as begun and not
yet past its first batch instead, and the resumed run runs it again whole, at the same step
and epoch, before it trains the next step (`restart_cut_validation`).

A handler already installed for SIGUSR1 (Lightning's SLURM auto-requeue: it saves an
`hpc_ckpt_*.ckpt` and requeues the job) is called first, then the run stops as above.

A run of `trainer.validate` alone (the zero-shot validation before training) listens too:
Lightning's validation loop never looks at its stop flag, so the signal would otherwise be
forgotten when `fit` starts. There the stop lands after the batch in flight, with
`SIGTERMException`, and nothing is saved (nothing was trained). A second SIGINT stops at
once, without saving, and the process exits 130.
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
        self._saving_cut_validation = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._listen(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":  # inside fit, on_train_start has listened already
            self._listen(trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if self.received is not None and trainer.state.fn == "validate":
            raise SIGTERMException  # Lightning's own stop, as in the training loop

    def _listen(self, trainer: L.Trainer) -> None:
        # after Lightning registered its SIGTERM (and SLURM SIGUSR1) handlers: chain them
        self._trainer = trainer
        if self._previous:
            return
        for signum in self.signals:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook's worker)
                return

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.received is None
        if signum == signal.SIGINT and not first:
            log.warning("second interrupt: stopping now, without saving")
            raise SystemExit(128 + signal.SIGINT)  # Lightning re-raises it: the process exits 130
        self.received = signum if first else self.received
        previous = self._previous.get(signum)
        if signum != signal.SIGINT and callable(previous):
            previous(signum, frame)  # Lightning's: kills DDP children, SLURM requeue
        if first:
            validating = self._trainer is not None and self._trainer.state.fn == "validate"
            log.warning(
                "received %s: stopping after the current %s",
                signal.Signals(signum).name,
                "validation batch" if validating else f"step, saving {self.path}",
            )
        trainer = self._trainer
        if trainer is not None:
            trainer._signal_connector.received_sigterm = True  # the loops' own stop flag

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        if self.received is None:  # a SIGTERM that reached Lightning's handler only
            self.received = int(signal.SIGTERM)
        self._saving_cut_validation = trainer.validating  # stopped inside fit's validation
        try:
            trainer.save_checkpoint(self.path, weights_only=False)  # the whole state, to resume
        finally:
            self._saving_cut_validation = False
        if trainer.is_global_zero:
            log.warning("saved %s at step %d", self.path, trainer.global_step)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: Any, checkpoint: dict[str, Any]
    ) -> None:
        if self._saving_cut_validation:
            restart_cut_validation(checkpoint)

    def teardown(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        for signum, previous in self._previous.items():
            if previous is not None:
                signal.signal(signum, previous)
        self._previous.clear()
        self._trainer = None


def restart_cut_validation(checkpoint: dict[str, Any]) -> None:
    """Mark, in a Lightning `checkpoint` saved while fit's validation was stopped partway,
    that validation as begun and not yet past its first batch.

    Lightning resumes such a state by running the validation again from its first batch
    (its "restarted mid-evaluation" case) before training the next step, logging it at the
    step and epoch it would have had. Left as saved (some batches completed, none in flight),
    the state reads as a validation that finished, and the resume skips it. Only the
    validation loop's batch counters change; `total` keeps the batches of earlier
    validations in the same epoch (`val_check_interval` < 1).
    """
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    before = progress["total"]["completed"] - progress["current"]["completed"]
    progress["total"].update(
        ready=before + 1, started=before + 1, processed=before, completed=before
    )
    progress["current"].update(ready=1, started=1, processed=0, completed=0)
    progress["is_last_batch"] = False

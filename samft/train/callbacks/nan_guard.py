"""Stop a diverging run instead of training on NaN and saving it as "best".

`NanGuard` skips an optimizer step whose gradients are not finite (the gradients are
dropped, so the weights do not move) and stops the run with `NonFiniteTrainingError` after
`max_skipped_steps` consecutive skipped steps, naming the step and the loss terms
(`train/loss`, `train/loss_focal`, ...) that were not finite. Trained weights that became
non-finite anyway (a finite but huge update) stop the run at once, before any checkpoint
callback of that batch runs (Lightning runs checkpoint callbacks last).

`FiniteModelCheckpoint` is Lightning's `ModelCheckpoint` that never keeps a non-finite
monitored value as a top-k ("best") checkpoint; Lightning's own keeps the first one even
when it is NaN (it only maps NaN to -inf for the ranking).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

log = logging.getLogger(__name__)

LOSS_KEYS = ("train/loss", "train/loss_focal", "train/loss_dice", "train/loss_iou")


class NonFiniteTrainingError(RuntimeError):
    """The loss, the gradients or the weights of a run are NaN/Inf and cannot recover."""

    exit_code = 3


def _non_finite_terms(trainer: L.Trainer, outputs: Any) -> list[str]:
    """The logged loss terms of the last step that are NaN/Inf."""
    values: dict[str, Any] = {k: trainer.callback_metrics.get(k) for k in LOSS_KEYS}
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if isinstance(loss, Tensor):
        values["train/loss"] = loss
    bad = []
    for key, value in values.items():
        if isinstance(value, Tensor) and value.numel() and not bool(torch.isfinite(value).all()):
            bad.append(key)
    return bad


class NanGuard(L.Callback):
    """Skip steps with non-finite gradients; stop after `max_skipped_steps` in a row."""

    def __init__(self, max_skipped_steps: int = 3, check_weights: bool = True) -> None:
        if max_skipped_steps < 1:
            raise ValueError(f"nan_guard.max_skipped_steps must be >= 1, got {max_skipped_steps}")
        self.max_skipped_steps = max_skipped_steps
        self.check_weights = check_weights
        self.skipped_in_a_row = 0
        self.skipped_total = 0
        self._step_skipped = False
        self._bad_grads: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_skipped = False
        self._bad_grads = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """Runs before gradient clipping: drop every gradient if any is NaN/Inf."""
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([g.detach().float().norm() for g in grads]))
        if bool(torch.isfinite(norm)):
            return
        self._bad_grads = [
            name
            for name, p in pl_module.named_parameters()
            if p.grad is not None and not bool(torch.isfinite(p.grad).all())
        ][:3]
        optimizer.zero_grad(set_to_none=True)  # optimizers skip parameters without a gradient
        self._step_skipped = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        terms = _non_finite_terms(trainer, outputs)
        if not (self._step_skipped or terms):
            self.skipped_in_a_row = 0
            self._check_weights(pl_module, step)
            return
        self.skipped_in_a_row += 1
        self.skipped_total += 1
        what = f"loss terms {terms}" if terms else "loss finite"
        if self._bad_grads:
            what += f", non-finite gradients in {self._bad_grads}"
        log.warning(
            "step %d (batch %d): NaN/Inf (%s); optimizer step skipped (%d in a row, max %d)",
            step,
            batch_idx,
            what,
            self.skipped_in_a_row,
            self.max_skipped_steps,
        )
        if self.skipped_in_a_row >= self.max_skipped_steps:
            raise NonFiniteTrainingError(
                f"training stopped at step {step}: {self.skipped_in_a_row} consecutive steps "
                f"with NaN/Inf ({what}). Lower optim.lr, keep trainer.gradient_clip_val, or "
                "check the data; raise callbacks.nan_guard.max_skipped_steps to tolerate more."
            )
        self._check_weights(pl_module, step)

    def _check_weights(self, pl_module: L.LightningModule, step: int) -> None:
        if not self.check_weights:
            return
        for name, param in pl_module.named_parameters():
            if param.requires_grad and not bool(torch.isfinite(param.detach()).all()):
                raise NonFiniteTrainingError(
                    f"training stopped at step {step}: weight {name} holds NaN/Inf after the "
                    "optimizer step (the update diverged). Lower optim.lr; no checkpoint of "
                    "these weights was saved."
                )

    def state_dict(self) -> dict[str, int]:
        return {"skipped_total": self.skipped_total}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_total = int(state_dict.get("skipped_total", 0))


class FiniteModelCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose top-k never holds a NaN/Inf score."""

    @property
    def state_key(self) -> str:
        # the key Lightning's ModelCheckpoint uses: checkpoints of either resume into the other
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def check_monitor_top_k(self, trainer: L.Trainer, current: Tensor | None = None) -> bool:
        if current is not None and not math.isfinite(float(current)):
            log.warning(
                "%s=%s at step %d is not finite: not kept as a best checkpoint",
                self.monitor,
                float(current),
                trainer.global_step,
            )
            return False
        return super().check_monitor_top_k(trainer, current)

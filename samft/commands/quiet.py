"""Silence library messages that say nothing about the run: Lightning's adverts, a
deprecation inside Lightning itself, the 'checkpoint directory not empty' warning that
samft's own `initial.pth` (or a resume) triggers, Lightning's alarm about modules in eval
mode (TinyViT's frozen BatchNorm, intended) and W&B's notice about a setting Lightning
passes. `samft.__main__` installs them for every command."""

from __future__ import annotations

import logging
import warnings
from typing import Any

ADVERT_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
IGNORED_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"Checkpoint directory .* exists and is not empty",
    # TinyViT's frozen BatchNorm layers, by design: `samft train` says so once in its words
    r"Found \d+ module\(s\) in eval mode at the start of training",
)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")


def quiet_library_noise() -> None:
    """Install the filters (idempotent)."""
    for name in ADVERT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdverts) for f in logger.filters):
            logger.addFilter(_DropAdverts())
    for message in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def without_wandb_anonymous(logger: Any) -> Any:
    """Lightning's WandbLogger passes `anonymous=None` to `wandb.init`, which W&B answers
    with a deprecation notice on every run; the setting has no effect, so it is left out."""
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)
    return logger

"""Silence library messages that say nothing about the run: Lightning's adverts, a
deprecation inside Lightning itself, and the 'checkpoint directory not empty' warning that
samft's own `initial.pth` (or a resume) triggers."""

from __future__ import annotations

import logging
import warnings

ADVERT_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
IGNORED_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"Checkpoint directory .* exists and is not empty",
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

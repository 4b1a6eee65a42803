"""`python -m samft <command>` (not train) stopped by SIGTERM: the stop reaches the command
wherever the signal lands, also inside a library's `except Exception`."""

from __future__ import annotations

import logging
import os
import signal

import pytest

from samft.__main__ import Stopped, _stop_on_sigterm


class SignalWhileWriting(logging.Handler):
    """A log handler that receives SIGTERM while it writes its line (as a command does when
    the signal comes at the moment it logs progress); like logging's own, it reports an
    `Exception` raised in `emit` with `handleError` and goes on."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except Exception:
            self.handleError(record)


def test_sigterm_inside_a_log_line_stops_the_command(monkeypatch):
    monkeypatch.setattr(logging, "raiseExceptions", False)  # handleError: silent, goes on
    log = logging.getLogger("samft.test_stop_signal")
    monkeypatch.setattr(log, "handlers", [SignalWhileWriting()])
    monkeypatch.setattr(log, "propagate", False)
    went_on = False
    with pytest.raises(Stopped) as stopped, _stop_on_sigterm(True):
        log.warning("cache: 1 / 16 embeddings computed")
        went_on = True
    assert stopped.value.signum == signal.SIGTERM and not went_on

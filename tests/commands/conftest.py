"""Command tests run the CLI in-process or as subprocesses; keep each in its own folder."""

import sys

import pytest


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run in tmp_path (Hydra writes outputs/ there); undo what the dispatcher changes."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAMFT_COMMAND", raising=False)
    monkeypatch.setattr(sys, "argv", list(sys.argv))

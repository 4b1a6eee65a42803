"""One report for an error in a multi-process run: the first failing rank says it, the
others (the same error, or a collective that lost its peer) exit with its code quietly."""

from __future__ import annotations

import pytest

from samft.commands import rank_errors

GLOO_PEER_GONE = RuntimeError(
    "[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
    "[127.0.0.1]:2771. This is typically caused by a remote worker crashing."
)


@pytest.fixture
def note(tmp_path, monkeypatch):
    monkeypatch.setenv(rank_errors.ENV_NOTE, str(tmp_path / "note"))
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("RANK", raising=False)
    return tmp_path / "note"


def test_the_first_failing_rank_reports_and_the_others_read_its_code(note):
    assert rank_errors.rank() == 1
    assert rank_errors.wait_for_report(timeout_s=0.1) is None  # nobody failed yet
    assert rank_errors.claim_report(2)
    assert not rank_errors.claim_report(1)  # a second rank, or a second error: quiet
    assert rank_errors.wait_for_report(timeout_s=0.1) == 2
    assert note.read_text() == "2"


def test_a_single_process_always_reports_and_writes_no_note(note, monkeypatch):
    monkeypatch.delenv("MASTER_PORT")
    assert rank_errors.rank() is None
    assert rank_errors.claim_report(2) and rank_errors.claim_report(2)
    assert not note.exists()
    assert not rank_errors.peer_failed(GLOO_PEER_GONE)


def test_a_collective_that_lost_its_peer_is_not_this_ranks_error(note):
    assert rank_errors.peer_failed(GLOO_PEER_GONE)
    try:
        raise ValueError("a samft error") from GLOO_PEER_GONE
    except ValueError as wrapped:
        assert rank_errors.peer_failed(wrapped)
    assert not rank_errors.peer_failed(RuntimeError("shape mismatch"))
    assert not rank_errors.peer_failed(ValueError("data.batch_size=-1 ..."))


def test_a_rank_launched_by_lightning_keeps_its_launchers_note(note, monkeypatch):
    rank_errors.prepare_note()
    assert rank_errors.os.environ[rank_errors.ENV_NOTE] == str(note)
    monkeypatch.setenv("LOCAL_RANK", "0")  # the launcher (or a process the user started)
    rank_errors.prepare_note()
    assert rank_errors.os.environ[rank_errors.ENV_NOTE] != str(note)

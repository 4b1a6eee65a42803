"""One message for an error in a multi-process (DDP) run, whichever process raised it.

In a DDP run every rank is a `python -m samft` process writing to the same terminal. When
one rank fails, the others fail too, inside a collective (gloo: `Connection closed by peer
... remote worker crashing`), or raise the same error themselves (the same bad input on every
rank). Each would print its own error or a 70-line traceback.

Here the first process of the run to fail with an error samft describes claims the report
(`claim_report`: a note in the temporary folder, created once, named in the environment
every rank inherits from the launcher) and prints its one line, naming its rank when it is
not rank 0; the others exit with the same code and print nothing. A rank that failed only
because another one did (`peer_failed`) waits a moment for that rank's note
(`wait_for_report`) and exits with its code. A single process claims nothing and writes no
note. Ranks started separately (torchrun, SLURM) have a note each: each says its own error.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
import uuid
from pathlib import Path

ENV_NOTE = "SAMFT_ERROR_NOTE"  # the note's path, set by the launcher, inherited by every rank
PEER_GONE = re.compile(
    r"Connection (closed|reset) by peer|Broken pipe|remote worker crashing|"
    r"Socket Timeout|NCCL communicator was aborted"
)


def prepare_note(keep_s: float = 86400.0) -> None:
    """In the process the user started: name a new note, which the DDP ranks Lightning
    launches later (with this environment, `LOCAL_RANK` >= 1) share. Nothing is written until
    a rank fails; notes of runs older than `keep_s` are removed here."""
    if os.environ.get("LOCAL_RANK", "0") != "0" and ENV_NOTE in os.environ:
        return  # a rank launched by the user's process: its note
    folder = Path(tempfile.gettempdir())
    for old in folder.glob("samft-error-*"):
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > keep_s:
                old.unlink()
    os.environ[ENV_NOTE] = str(folder / f"samft-error-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def rank() -> int | None:
    """This process's rank in a multi-process run (`RANK`, else `LOCAL_RANK`), None in a
    single process. Read from the rendezvous address every rank has (`MASTER_PORT`):
    Lightning removes `WORLD_SIZE` when the run ends, before the error reaches us."""
    if "MASTER_PORT" not in os.environ:
        return None
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def claim_report(code: int) -> bool:
    """True when this process should print its error: a single process, or the first rank
    of the run to fail (it records `code` for the others). False: another rank has."""
    path = os.environ.get(ENV_NOTE)
    if rank() is None or not path:
        return True
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    except OSError:  # no note possible (a read-only temp dir): say it, maybe twice
        return True
    with os.fdopen(handle, "w") as note:
        note.write(str(code))
    return True


def wait_for_report(timeout_s: float = 10.0) -> int | None:
    """The exit code the failing rank recorded, once its note is there; None if no note
    appears within `timeout_s` (a rank that died without a word: killed, out of memory)."""
    path = os.environ.get(ENV_NOTE)
    deadline = time.monotonic() + timeout_s
    while path:
        try:
            text = Path(path).read_text().strip()
        except FileNotFoundError:
            text = ""
        if text:  # created and written (the writer writes once, right after creating)
            return int(text)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    return None


def peer_failed(err: BaseException) -> bool:
    """True for an error of torch.distributed raised because another rank went away."""
    import torch.distributed

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, torch.distributed.DistError) or (
            isinstance(seen, RuntimeError) and PEER_GONE.search(str(seen))
        ):
            return rank() is not None
        seen = seen.__cause__ or seen.__context__
    return False

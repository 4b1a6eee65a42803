"""One training process per run folder: a lock file with pid, host and start time.

`samft train` takes `<run folder>/.samft.lock` before it builds anything and removes it on
exit. A second run in the same folder is refused with the owner's pid, host and start
time, unless the lock is stale (its pid is dead on this host), which is taken over. A run
folder that already holds checkpoints of an earlier run is only reused to resume
(`ckpt_path=` pointing inside it); otherwise its checkpoints and logs would be overwritten.

Only the launching process takes the lock: DDP children that Lightning starts (they carry
LOCAL_RANK / RANK != 0) and other ranks of a multi-node run skip it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".samft.lock"
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "GROUP_RANK")


class RunFolderInUseError(ValueError):
    """The run folder belongs to another run."""


def is_launcher_process() -> bool:
    """True unless a rank variable of the environment says this is not rank 0."""
    return all(os.environ.get(name, "0") in ("0", "") for name in RANK_VARIABLES)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _describe(info: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on host {info.get('host')} since {started}"


class RunLock:
    """The lock of one run folder; `acquire` / `release`, or use as a context manager."""

    def __init__(self, run_dir: str | Path, resume: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.resume = resume
        self.held = False

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(info, handle)
            self.held = True
            break
        else:
            raise RunFolderInUseError(f"run folder {self.run_dir}: could not take {self.path}")
        self._refuse_reuse_without_resume()
        return self

    def _take_over_if_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            owner = {}
        mine = owner.get("host") == socket.gethostname()
        if owner and not (mine and not _pid_alive(int(owner.get("pid", -1)))):
            raise RunFolderInUseError(
                f"run folder {self.run_dir} is in use by another samft run ({_describe(owner)}); "
                "choose another hydra.run.dir, or wait for that run to end. If it is gone "
                f"(another host, killed), remove {self.path}."
            )
        log.warning("taking over stale lock %s (%s)", self.path, _describe(owner) or "empty")
        self.path.unlink(missing_ok=True)

    def _refuse_reuse_without_resume(self) -> None:
        checkpoints = self.run_dir / "checkpoints"
        if self.resume or not checkpoints.is_dir() or not any(checkpoints.glob("*.ckpt")):
            return
        self.release()
        raise RunFolderInUseError(
            f"run folder {self.run_dir} already holds checkpoints of an earlier run "
            f"({checkpoints}); resume it with ckpt_path={checkpoints / 'last.ckpt'}, or "
            "choose another hydra.run.dir"
        )

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

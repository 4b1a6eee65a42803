"""`python -m samft train` under faults, as a user meets them: divergence, a stop signal,
a busy run folder, wrong resume files and config typos. Subprocesses on the demo data."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from demo_cli import demo_overrides, run_samft, signal_self

from samft.train.run_lock import LOCK_NAME


def _overrides(data: Path, out: Path, *extra: str) -> list[str]:
    return demo_overrides(data, out, "trainer.log_every_n_steps=1", *extra)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_samft(args, cwd)


def test_diverging_run_stops_non_zero_and_saves_no_best(tmp_path):
    out = tmp_path / "run"
    args = _overrides(tmp_path / "data", out, "optim.lr=1e30", "trainer.max_epochs=3")
    result = _run([*args, "validate_before_training=false"], tmp_path)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "training stopped at step" in result.stderr and "NaN/Inf" in result.stderr
    assert "Traceback" not in result.stderr
    assert (
        not list((out / "checkpoints").glob("best-*")) and not (out / "final_metrics.json").exists()
    )


def test_sigterm_saves_last_ckpt_and_exits_143(tmp_path):
    out = tmp_path / "run"
    args = _overrides(
        tmp_path / "data", out, "trainer.max_epochs=50", "validate_before_training=false"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SAMFT_COMMAND", None)
    log = tmp_path / "run.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "samft", *args], cwd=tmp_path, env=env, stdout=sink, stderr=sink
        )
    deadline = time.time() + 180
    while time.time() < deadline and "train/loss" not in _csv_text(out):
        time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, log.read_text()[-3000:]
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] > 0
    assert not (out / "final_metrics.json").exists() and not (out / LOCK_NAME).exists()


@pytest.mark.parametrize(
    "phase, signum",
    [("validate", signal.SIGTERM), ("fit_validation", signal.SIGTERM), ("fit", signal.SIGUSR1)],
)
def test_a_signal_in_any_phase_of_a_run_ends_it_non_zero(tmp_path, phase, signum):
    """The zero-shot validation before training, training, and validation inside training:
    the run stops there with 128 + the signal, keeps what it did, and says how to go on."""
    out = tmp_path / "run"
    args = _overrides(
        tmp_path / "data", out, "trainer.max_epochs=3", *signal_self(signum, phase, step=3)
    )
    result = _run(args, tmp_path)
    said = result.stdout + result.stderr
    assert result.returncode == 128 + signum, said[-3000:]
    assert not (out / "final_metrics.json").exists() and not (out / LOCK_NAME).exists()
    assert "Traceback" not in said
    if phase == "validate":  # nothing trained: nothing saved, nothing to resume
        assert not (out / "checkpoints").exists() or not list((out / "checkpoints").glob("*.ckpt"))
        assert "before training started" in said
        return
    last = out / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] >= 3
    command = said.split("Resume with:")[1].split("\n")[1].strip()
    assert command.startswith("python -m samft train +experiment=demo")
    assert command.endswith(f"hydra.run.dir={out} ckpt_path={last}")


def test_a_second_ctrl_c_stops_at_once_with_130(tmp_path):
    out = tmp_path / "run"
    args = _overrides(
        tmp_path / "data",
        out,
        "trainer.max_epochs=3",
        "validate_before_training=false",
        *signal_self(signal.SIGINT, "fit", step=1, times=2),
    )
    result = _run(args, tmp_path)
    said = result.stdout + result.stderr
    assert result.returncode == 130, said[-3000:]
    assert "second interrupt: stopping now, without saving" in said
    assert not (out / "final_metrics.json").exists() and not (out / LOCK_NAME).exists()


def _csv_text(out: Path) -> str:
    path = out / "csv" / "metrics.csv"
    return path.read_text() if path.is_file() else ""


def test_busy_run_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    owner = {"pid": os.getppid(), "host": socket.gethostname(), "started": time.time()}
    (out / LOCK_NAME).write_text(json.dumps(owner))
    live = {name: f"the live run's {name}\n" for name in ("config.yaml", "overrides.yaml")}
    (out / ".hydra").mkdir()
    for name, text in live.items():
        (out / ".hydra" / name).write_text(text)
    result = _run(_overrides(tmp_path / "data", out), tmp_path)
    assert result.returncode == 2 and "is in use by another samft run" in result.stderr
    assert f"pid {os.getppid()}" in result.stderr and "Traceback" not in result.stderr
    # the refused run wrote nothing into the live run's folder: its record is intact
    assert {p.name for p in out.iterdir()} == {LOCK_NAME, ".hydra"}
    assert {n: (out / ".hydra" / n).read_text() for n in live} == live
    assert not (out / ".hydra" / "hydra.yaml").exists()


def test_ckpt_path_to_weights_file_is_explained(tmp_path):
    weights = tmp_path / "sam.pth"
    torch.save({"image_encoder.x": torch.zeros(1)}, weights)
    result = _run(_overrides(tmp_path / "data", tmp_path / "o", f"ckpt_path={weights}"), tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "model.checkpoint=" in result.stderr and "KeyError" not in result.stderr


def test_typo_in_override_lists_known_keys(tmp_path):
    result = _run(["train", "+experiment=demo", "finetune.lora_rnk=4", "--cfg", "job"], tmp_path)
    assert result.returncode == 2
    assert "Could not override 'finetune.lora_rnk'" in result.stderr
    assert "known keys of 'finetune':" in result.stderr and "'lora_rank'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cache_without_a_folder_is_one_line(tmp_path):
    args = _overrides(tmp_path / "data", tmp_path / "run")
    result = _run(["cache", *args[1:], "cache.dir=null"], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "samft cache: error: CacheError: cache.dir is not set" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_trainer_gpu_without_a_gpu_is_explained_before_any_work(tmp_path):
    data = tmp_path / "data"
    result = _run(_overrides(data, tmp_path / "run", "trainer=gpu"), tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    expected = "samft train: error: ValueError: trainer.accelerator=gpu but no CUDA GPU"
    assert expected in result.stderr
    assert "use trainer=cpu" in result.stderr and "Traceback" not in result.stderr
    assert not data.exists()  # refused before the demo data were generated


def test_a_run_folder_that_cannot_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the run folder's parent should be")
    result = _run(_overrides(tmp_path / "data", blocker / "run"), tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "samft train: error:" in result.stderr and str(blocker) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("rank", [1, 0])
def test_an_error_on_any_ddp_rank_is_said_once_in_one_line(tmp_path, rank):
    """A user error raised on one rank of a 2-process DDP run: the run ends (no rank left
    waiting in a collective) with exit 2 and samft's one line, once, naming the rank when it
    is not 0; no traceback of the ranks that lost their peer."""
    args = _overrides(
        tmp_path / "data",
        tmp_path / "run",
        "trainer=ddp_cpu",
        "trainer.max_steps=4",
        "validate_before_training=false",
        "+callbacks.fail._target_=demo_cli.FailOnRank",
        f"+callbacks.fail.rank={rank}",
    )
    result = run_samft(args, tmp_path, timeout=300)
    said = result.stdout + result.stderr
    assert result.returncode == 2, said[-3000:]
    where = " (rank 1)" if rank else ""
    assert [line for line in said.splitlines() if line.startswith("samft train: error")] == [
        f"samft train: error{where}: DataError: image broken.png on rank {rank}: cannot be read "
        "(a test)"
    ]
    assert "Traceback" not in said and "Connection closed by peer" not in said

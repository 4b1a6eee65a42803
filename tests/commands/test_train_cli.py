"""`python -m samft train` end to end, as a user runs it: demo recipe, resume after a kill,
two-process DDP. Each run uses a small generated dataset in a temporary folder."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from demo_cli import demo_overrides, run_samft

from samft import conf
from samft.data.synthetic import write_shapes_dataset

_overrides = demo_overrides
_run = run_samft


def _metrics(out: Path) -> list[dict]:
    with open(out / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_usage_and_help(tmp_path):
    result = _run([], tmp_path)
    assert result.returncode == 2 and "usage: python -m samft <command>" in result.stderr
    result = _run(["train", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "experiment: demo" in result.stdout and "finetune: decoder, full, lora" in result.stdout


def test_cfg_job_composes_the_demo(tmp_path):
    result = _run(["train", "+experiment=demo", "--cfg", "job"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "variant: tiny" in result.stdout and "image_encoder: full" in result.stdout


def test_typo_in_a_config_key_fails_before_training(tmp_path):
    result = _run(_overrides(tmp_path / "d", tmp_path / "o", "+finetune.lora_rnk=4"), tmp_path)
    assert result.returncode != 0
    assert "unknown key(s) ['lora_rnk'] in config group 'finetune'" in result.stderr


def test_demo_trains_validates_logs_and_checkpoints(tmp_path):
    out = tmp_path / "run"
    result = _run(_overrides(tmp_path / "data", out, "trainer.max_epochs=2"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / ".hydra" / "config.yaml").is_file(), "composed config is saved in the run"
    baseline = json.loads((out / "baseline_metrics.json").read_text())
    final = json.loads((out / "final_metrics.json").read_text())
    assert {"val/miou", "val/miou/click_1", "val/iou_head_mae"} <= set(baseline) & set(final)
    assert final["val/num_objects"] == baseline["val/num_objects"] > 0
    rows = _metrics(out)
    assert any(r.get("train/loss") for r in rows) and any(r.get("val/miou") for r in rows)
    checkpoints = {p.name for p in (out / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and any(n.startswith("best-") for n in checkpoints)
    assert "initial.pth" in checkpoints, "a model trained from scratch keeps its start point"
    assert list((out / "predictions").glob("step*.png"))


@pytest.mark.slow
def test_resume_after_sigkill_continues_at_the_same_step(tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    write_shapes_dataset(data, num_train=8, num_val=4, image_size=256, seed=0)
    args = _overrides(
        data,
        out,
        "trainer.max_epochs=12",
        "callbacks.last_checkpoint.every_n_train_steps=5",
        "callbacks.best_checkpoint.save_last=false",  # last.ckpt only every 5 steps: mid-epoch
        "validate_before_training=false",
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SAMFT_COMMAND", None)
    log = tmp_path / "first_run.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "samft", *args],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while time.time() < deadline and not last.exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists(), "no last.ckpt before the kill:\n" + log.read_text()[-3000:]
    saved_step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < saved_step < 48, "killed too late to test a resume"

    resumed = _run([*args, f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'run2'}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = _metrics(tmp_path / "run2")
    steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert min(steps) >= saved_step, (saved_step, steps[:3])
    final = torch.load(
        tmp_path / "run2" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert final["global_step"] == 48  # 12 epochs x 4 batches: the run finished


@pytest.mark.slow
def test_two_process_ddp_gathers_metrics_across_ranks(tmp_path):
    out = tmp_path / "run"
    result = _run(
        _overrides(tmp_path / "data", out, "trainer=ddp_cpu", "trainer.max_epochs=1"),
        tmp_path,
        timeout=500,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads((out / "final_metrics.json").read_text())
    # 4 val images split over 2 ranks; the metric must count the objects of both
    single = json.loads((out / "baseline_metrics.json").read_text())
    assert final["val/num_objects"] == single["val/num_objects"]
    annotations = json.loads((tmp_path / "data" / "annotations_val.json").read_text())
    assert final["val/num_objects"] == len(annotations["annotations"])


RECIPES = sorted(p.stem for p in (Path(conf.__file__).parent / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_composes_into_valid_configs(name):
    from hydra import compose, initialize_config_module

    from samft.train.config import (
        FinetuneConfig,
        InteractiveConfig,
        LossConfig,
        ModelConfig,
        as_config,
    )
    from samft.train.optim import OptimConfig

    with initialize_config_module("samft.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"+experiment={name}", "model.checkpoint=x.pth"])
    for cls, group in [
        (ModelConfig, "model"),
        (FinetuneConfig, "finetune"),
        (InteractiveConfig, "interactive"),
        (OptimConfig, "optim"),
        (LossConfig, "loss"),
    ]:
        as_config(cls, dict(cfg[group]), group)
    assert cfg.data._target_ == "samft.data.datamodule.SamDataModule"


def test_data_command_reports_statistics_and_pictures(tmp_path):
    out = tmp_path / "report"
    args = _overrides(tmp_path / "data", out)
    result = _run(["data", *args[1:]], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train: " in result.stdout and "skipped:" in result.stdout
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["train"]["images"] == 8 and stats["val"]["images"] == 4
    assert (out / "train_samples.png").is_file() and (out / "val_samples.png").is_file()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_simulated_nodes_score_like_one_process(tmp_path):
    """DDP across 2 'nodes' on this machine (one process each, node ranks from the
    environment, loopback rendezvous) gives the zero-shot validation of one process."""
    single = tmp_path / "single"
    args = _overrides(tmp_path / "data", single, "trainer=cpu", "trainer.max_steps=1")
    result = _run(args, tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    out = tmp_path / "nodes"
    port = _free_port()
    node_args = _overrides(
        tmp_path / "data",
        out,
        "trainer=ddp_cpu",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        "trainer.max_steps=1",
    )
    procs, logs = [], []
    for node_rank in (0, 1):
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "WANDB_MODE": "offline",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "NODE_RANK": str(node_rank),
        }
        env.pop("SAMFT_COMMAND", None)
        logs.append(open(tmp_path / f"node{node_rank}.log", "w"))  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "samft", *node_args],
                cwd=tmp_path,
                env=env,
                stdout=logs[-1],
                stderr=subprocess.STDOUT,
            )
        )
    codes = [proc.wait(timeout=400) for proc in procs]
    for handle in logs:
        handle.close()
    text = "\n".join((tmp_path / f"node{r}.log").read_text()[-2000:] for r in (0, 1))
    assert codes == [0, 0], text
    one = json.loads((single / "baseline_metrics.json").read_text())
    two = json.loads((out / "baseline_metrics.json").read_text())
    assert two["val/num_objects"] == one["val/num_objects"]
    for key in ("val/miou", "val/dice", "val/miou/click_1"):
        assert abs(two[key] - one[key]) < 1e-4, (key, one[key], two[key])


@pytest.mark.slow
def test_a_short_run_validates_at_its_end_and_a_resume_continues_in_its_folder(tmp_path):
    """max_steps before the first validation still ends with final metrics; resuming the
    run's own last.ckpt (no hydra.run.dir) goes on in that folder, one metrics.csv."""
    out = tmp_path / "run"
    args = _overrides(
        tmp_path / "data", out, "trainer.check_val_every_n_epoch=50", "trainer.max_epochs=50",
        "validate_before_training=false", "trainer.log_every_n_steps=1",
    )  # fmt: skip
    first = _run([*args, "trainer.max_steps=2"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    final = json.loads((out / "final_metrics.json").read_text())
    assert 0 <= final["val/miou"] <= 1  # validated once, at step 2
    last = out / "checkpoints" / "last.ckpt"

    elsewhere = [a for a in args if not a.startswith("hydra.run.dir=")]
    second = _run([*elsewhere, "trainer.max_steps=4", f"ckpt_path={last}"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert not (tmp_path / "outputs").exists()  # no new dated folder
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4
    steps = [int(r["step"]) for r in _metrics(out) if r.get("train/loss")]
    assert steps == [0, 1, 2, 3]  # every training row, the first run's and the resumed ones
    assert (out / "csv" / "metrics-1.csv").is_file()  # the first run's file, kept as it was

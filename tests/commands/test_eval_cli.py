"""`python -m samft eval ...` end to end: one or two checkpoints, data from the command line
or from the training run, and clear errors."""

from __future__ import annotations

import json
import signal

import pytest
import torch
import yaml
from demo_cli import stop_when_it_says
from test_export import make_tuner, save_lightning_checkpoint

from samft.__main__ import main
from samft.model.registry import build_sam
from samft.weights import save_sam


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    torch.manual_seed(0)
    return save_sam(build_sam("tiny"), tmp_path_factory.mktemp("w") / "original.pth")


@pytest.fixture(scope="module")
def run(tmp_path_factory, ct_organs):
    """A `samft train`-like run folder: a checkpoint and the composed config Hydra saved."""
    folder = tmp_path_factory.mktemp("run")
    checkpoint = save_lightning_checkpoint(folder / "checkpoints" / "last.ckpt", make_tuner(seed=1))
    config = {
        "seed": 0,
        "data": {
            "val": {"format": "coco", "annotations": str(ct_organs / "annotations.json")},
            "min_area": 16,
            "max_area_fraction": 0.9,
        },
    }
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    return checkpoint


def data_args(ct_organs) -> list[str]:
    return [
        f"data.val.annotations={ct_organs / 'annotations.json'}",
        f"data.val.images={ct_organs}",
    ]


def test_eval_two_checkpoints_side_by_side(original, run, ct_organs, tmp_path, capsys):
    main(
        ["samft", "eval", f"checkpoint=[{original},{run}]", *data_args(ct_organs)]
        + ["trainer=cpu", "max_images=1", "num_workers=0", "clicks=[1,3]", "output=report.json"]
    )
    table = capsys.readouterr().out
    assert f"A: {original} (weights, tiny, 256 px)" in table
    assert f"eval {run}: 1/1 images, " in table  # progress, as the output is no terminal
    assert f"B: {run} (lightning, tiny, 256 px)" in table
    report = json.loads((tmp_path / "report.json").read_text())
    a, b = (c["metrics"] for c in report["checkpoints"])
    assert report["difference_b_minus_a"]["miou/box"] == pytest.approx(
        b["miou/box"] - a["miou/box"]
    )
    row = next(line for line in table.splitlines() if line.startswith("miou/click_3 "))
    assert row.split()[1:3] == [f"{a['miou/click_3']:.4f}", f"{b['miou/click_3']:.4f}"]
    assert report["settings"]["split"] == "val" and report["settings"]["clicks"] == [1, 3]
    # the footer says what the rows are and why they differ from training's val/miou
    assert f"data: data.val from the command line: format=coco, annotations={ct_organs}" in table
    assert "click_N rows: after N simulated centre correction clicks" in table
    assert "single-mask output" in table and "Training's val/miou differs" in table


def test_eval_takes_the_data_of_the_training_run(run, ct_organs, tmp_path, capsys):
    main(
        [
            "samft",
            "eval",
            f"checkpoint={run}",
            "trainer=cpu",
            "max_images=1",
            "clicks=[1]",
            "num_workers=0",
            "output=r.json",
        ]
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["settings"]["dataset"]["annotations"] == str(ct_organs / "annotations.json")
    assert report["checkpoints"][0]["metrics"]["num_objects"] > 0
    # ... and says so, in the log and above the table's notes, naming the data
    used = f"data.val of the training run ({run.parent.parent / '.hydra' / 'config.yaml'})"
    (log_file,) = (tmp_path / "outputs").rglob("*.log")  # Hydra's job log
    assert f"data.val not given: scoring {used}" in log_file.read_text()
    table = capsys.readouterr().out
    assert f"data: {used}: format=coco, annotations={ct_organs / 'annotations.json'}" in table


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        (["data.val.annotations=a.json"], "data.val.images not set: data.val.annotations is given"),
        (["data.val.images=imgs"], "data.val.annotations not set: data.val.images is given"),
        (
            ["data=folder", "data.val.masks=m"],
            "data.val.images not set: data.val.masks is given",
        ),
    ],
)
def test_eval_with_a_split_given_in_part_is_an_error(run, given, missing, capsys):
    """Even with a training run to fall back on: scoring other data would be silent."""
    with pytest.raises(SystemExit):
        main(["samft", "eval", f"checkpoint={run}", "trainer=cpu", *given])
    err = capsys.readouterr().err
    assert missing in err and "must be given in full" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_eval_with_trainer_gpu_without_a_gpu_suggests_trainer_cpu(original, ct_organs, capsys):
    with pytest.raises(SystemExit):
        main(["samft", "eval", f"checkpoint={original}", *data_args(ct_organs), "trainer=gpu"])
    err = capsys.readouterr().err
    assert "trainer.accelerator=gpu but no CUDA GPU is available" in err
    assert "use trainer=cpu" in err


def test_eval_without_data_says_which_keys_to_set(original, capsys):
    with pytest.raises(SystemExit):
        main(["samft", "eval", f"checkpoint={original}", "trainer=cpu"])
    err = capsys.readouterr().err
    assert "data.val is not set (missing: data.val.annotations, data.val.images)" in err


def test_eval_with_an_unwritable_output_is_a_clear_error(original, ct_organs, tmp_path, capsys):
    (tmp_path / "blocker").write_text("a file")
    with pytest.raises(SystemExit):
        main(
            [
                "samft",
                "eval",
                f"checkpoint={original}",
                *data_args(ct_organs),
                "output=blocker/report.json",
            ]
        )
    assert "output=blocker/report.json: cannot write to folder blocker" in capsys.readouterr().err


def test_eval_rejects_three_checkpoints(original, capsys):
    with pytest.raises(SystemExit):
        main(["samft", "eval", f"checkpoint=[{original},{original},{original}]"])
    assert "expected one path or a list of two" in capsys.readouterr().err


def test_sigterm_stops_eval_with_no_report_written(original, ct_organs, tmp_path):
    """A stop signal while the first of two checkpoints is scored: exit 143, one line
    saying what stopped, and no report, whole or half."""
    args = ["eval", f"checkpoint=[{original},{original}]", *data_args(ct_organs)]
    args += ["trainer=cpu", "max_images=2", "num_workers=0", "clicks=[1]", "output=report.json"]
    code, said = stop_when_it_says(args, tmp_path, ": 1/2 images")
    assert code == 128 + signal.SIGTERM, said[-3000:]
    stopped = [line for line in said.splitlines() if "stopped by" in line]
    assert stopped == [
        "samft eval: stopped by SIGTERM; the files it finished are complete (each is written "
        "whole), the rest is not written"
    ]
    assert "Traceback" not in said and "2/2 images" not in said  # stopped in the first
    assert not (tmp_path / "report.json").exists()
    assert not list(tmp_path.rglob("*.tmp"))

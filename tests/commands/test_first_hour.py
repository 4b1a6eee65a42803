"""What a new user meets in the first hour: the demo recipe on their own folder data, help
that lists each command's own keys, and errors that say what to type (a missing `prompts=`,
a GPU asked for on a machine without one, ONNX not installed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_module

from samft.__main__ import main
from samft.commands import accelerator
from samft.commands.accelerator import check_accelerator, check_device, warn_bf16_on_cpu
from samft.commands.common import build_datamodule

TRAINING_GROUPS = ("finetune:", "interactive:", "experiment:", "loss:", "optim:")


def compose_train(overrides: list[str]):
    with initialize_config_module("samft.conf", version_base="1.3"):
        return compose("train", overrides=overrides)


def test_demo_keeps_its_shapes_dataset_by_default():
    cfg = compose_train(["+experiment=demo"])
    assert cfg.data.train.format == "coco"
    assert cfg.data.train.annotations == "demo_data/shapes/annotations_train.json"
    assert cfg.generate_dataset.root == "demo_data/shapes"
    assert cfg.data.batch_size == 4 and cfg.data.max_objects_per_image == 8


def test_demo_on_folder_data_needs_only_the_folder_paths(shared_data):
    """`+experiment=demo data=folder data.*.images=... data.*.masks=...`: no `~data...`
    deletions; the coco keys of the demo's data are gone and the datamodule builds."""
    root = shared_data / "dsb-nuclei"  # images/ + 16-bit instance masks/ of the same stem
    cfg = compose_train(
        ["+experiment=demo", "data=folder"]
        + [
            f"data.{split}.{key}={root / split / key}"
            for split in ("train", "val")
            for key in ("images", "masks")
        ]
    )
    assert "annotations" not in cfg.data.train and "annotations" not in cfg.data.val
    assert cfg.data.train.mask_type == "instance"
    assert cfg.data.batch_size == 4  # the demo's own data settings still apply
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    assert len(datamodule.datasets["train"]) == 48 and len(datamodule.datasets["val"]) == 16
    sample = datamodule.datasets["val"][0]
    assert sample is not None


@pytest.mark.parametrize("command", ["predict", "eval", "export"])
def test_help_lists_the_commands_own_keys_not_the_training_groups(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["samft", command, "--help"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert out.startswith(f"python -m samft {command} checkpoint=")
    assert not any(group in out for group in TRAINING_GROUPS), out
    if command == "predict":
        assert "prompts=FILE" in out and "prompts_file" not in out


@pytest.mark.parametrize("command", ["train", "cache", "data"])
def test_training_side_commands_have_their_own_usage(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["samft", command, "--help"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert out.startswith(f"python -m samft {command} +experiment=NAME")
    assert "experiment: demo" in out and "model: lite_medsam" in out  # the groups listed


@pytest.mark.parametrize("command, folder", [("cache", "cache"), ("data", "data")])
def test_cache_and_data_keep_their_folders_out_of_the_training_runs(command, folder):
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    name = {"data": "data_report"}.get(command, command)
    with initialize_config_module("samft.conf", version_base="1.3"):
        cfg = compose(name, overrides=["+experiment=litemedsam_decoder"], return_hydra_config=True)
    assert cfg.hydra.run.dir.startswith(f"outputs/{folder}/")
    assert cfg.model.variant == "lite_medsam"  # the recipe still applies


def test_weights_help_shows_how_to_fetch_and_add(capsys, tmp_path, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        main(["samft", "weights", "--help"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert out.startswith("python -m samft weights [fetch=NAME]")
    assert "fetch=NAME" in out and "add=NAME file=PATH" in out and "$SAMFT_CACHE" in out
    monkeypatch.setenv("SAMFT_CACHE", str(tmp_path))
    main(["samft", "weights"])  # the listing ends with the same two ways to fill the cache
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "weights fetch=NAME" in last and "weights add=NAME file=PATH" in last


def test_predict_without_prompts_names_prompts_file_as_the_docs_do(capsys):
    with pytest.raises(SystemExit):
        main(["samft", "predict", "checkpoint=x.pth", "input=photos", "output=out"])
    err = capsys.readouterr().err
    assert "missing prompts=FILE;" in err and "prompts_file" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_predict_device_cuda_without_a_gpu_suggests_cpu_or_auto(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(
            ["samft", "predict", "checkpoint=x.pth", "input=i", "prompts=p.json", "output=o"]
            + ["device=cuda"]
        )
    err = capsys.readouterr().err
    assert "device=cuda but no CUDA GPU is available" in err
    assert "use device=cpu or device=auto" in err


def test_check_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for ok in (
        {"accelerator": "cpu"},
        {"accelerator": "auto"},
        {},
        None,
        {"accelerator": object()},
    ):
        check_accelerator(ok)
    for name in ("gpu", "cuda", "GPU"):
        with pytest.raises(ValueError, match=rf"trainer.accelerator={name} .*use trainer=cpu"):
            check_accelerator({"accelerator": name})
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"trainer.accelerator=mps .*use trainer=cpu"):
        check_accelerator({"accelerator": "mps"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_accelerator({"accelerator": "gpu"})


def test_check_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for ok in ("auto", "cpu", None):
        check_device(ok)
    with pytest.raises(ValueError, match=r"device=cuda:0 .*use device=cpu or device=auto"):
        check_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_device("cuda:0")
    with pytest.raises(ValueError, match=r"device=cuda:1 but this machine has 1 CUDA device"):
        check_device("cuda:1")


def test_export_onnx_without_onnx_says_how_to_install_it(tmp_path):
    """In a fresh process where `onnx` cannot be found: the install command, before the
    checkpoint is even read."""
    script = (
        "import samft.weights.onnx as o; o.onnx_installed = lambda: False\n"
        "from samft.__main__ import main\n"
        "main(['samft', 'export', 'checkpoint=missing.ckpt', 'output=m', 'format=onnx'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SAMFT_COMMAND"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert 'pip install "samft[onnx]"' in done.stderr, done.stderr
    assert "Module onnx is not installed" not in done.stderr


def test_export_onnx_function_checks_onnx_before_tracing(monkeypatch):
    from samft.model.registry import build_sam
    from samft.weights.onnx import export_onnx

    monkeypatch.setattr("samft.weights.onnx.onnx_installed", lambda: False)
    with pytest.raises(ImportError, match=r'pip install "samft\[onnx\]"'):
        export_onnx(build_sam("tiny"), "m")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=abc", r"data\.batch_size='abc': expected int"),
        ("data.min_area=[1]", r"data\.min_area=\[1\]: expected float"),
        ("prompts.point_prob=high", r"prompts\.point_prob='high': expected float"),
        (
            "+data.batch_sise=2",
            r"unknown key data\.batch_sise; known keys of 'data': \[.*'batch_size'",
        ),
    ],
)
def test_ill_typed_data_and_prompts_values_are_named_before_building(override, message):
    with initialize_config_module("samft.conf", version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=demo", override])
    with pytest.raises(ValueError, match=message):
        build_datamodule(cfg)


def test_run_names_come_from_the_data():
    from samft.commands.run_name import dataset_name

    assert dataset_name({"annotations": "demo_data/shapes/annotations_train.json"}) == "shapes"
    assert dataset_name({"images": "/d/dsb-nuclei/train/images", "masks": "m"}) == "dsb-nuclei"
    assert dataset_name({"annotations": "coco/val.json", "images": "coco/val2017"}) == "coco"
    assert dataset_name({"images": "???"}) == "data"
    with initialize_config_module("samft.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "+experiment=demo",
                "data=folder",
                "data.train.images=/x/cells/train/images",
                "data.train.masks=/x/cells/train/masks",
            ],
        )
    assert cfg.name == "demo-cells"


def test_run_summary_says_where_things_are_and_what_comes_next(tmp_path):
    from samft.commands.run_summary import run_summary

    text = run_summary(
        tmp_path / "demo-shapes" / "run1",
        {"val/miou": 0.057, "val/dice": 0.104},
        {"val/miou": 0.322, "val/dice": float("nan")},
        str(tmp_path / "best.ckpt"),
        None,
    )
    assert f"run folder:       {tmp_path / 'demo-shapes' / 'run1'}" in text
    assert "val/miou             0.057 -> 0.322" in text
    assert "val/dice             0.104 ->   -" in text
    assert f"eval checkpoint=[{tmp_path}/demo-shapes/run1/checkpoints/initial.pth," in text
    assert f"export checkpoint={tmp_path / 'best.ckpt'} output=exports/demo-shapes" in text


@pytest.mark.parametrize("units", [False, True])
def test_bf16_on_a_cpu_without_bf16_units_warns(monkeypatch, caplog, units):
    monkeypatch.setattr(accelerator.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: units, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    bf16_cpu = {"accelerator": "cpu", "precision": "bf16-mixed"}
    assert warn_bf16_on_cpu(bf16_cpu) is not units
    assert ("trainer.precision=bf16-mixed on a CPU without bf16" in caplog.text) is not units
    assert warn_bf16_on_cpu({"accelerator": "auto", "precision": "bf16-true"}) is not units
    assert not warn_bf16_on_cpu({"accelerator": "cpu", "precision": "32-true"})
    assert not warn_bf16_on_cpu({"accelerator": "gpu", "precision": "bf16-mixed"})
    assert not warn_bf16_on_cpu(None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # auto picks the GPU
    assert not warn_bf16_on_cpu({"accelerator": "auto", "precision": "bf16-mixed"})

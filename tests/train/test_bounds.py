"""Config values outside their range are refused where the config is read, with one message
naming the key, the value and the allowed range."""

from __future__ import annotations

import math
import signal
import sys

import pytest
from hydra import compose, initialize_config_module

from samft.__main__ import main
from samft.bounds import Bounds
from samft.commands.schema import (
    AUTOMATIC_MASK_SETTINGS,
    TRAINER_BOUNDS,
    check_group,
    check_settings,
)
from samft.data.datamodule import SamDataModule
from samft.train.config import FinetuneConfig, LossConfig, ModelConfig, as_config
from samft.train.optim import OptimConfig


def test_bounds_contain_and_read_as_written():
    unit = Bounds(0, 1, high_open=True)
    assert [unit.contains(v) for v in (-0.1, 0, 0.5, 1, math.nan)] == [0, 1, 1, 0, 0]
    assert str(unit) == "[0, 1)" and str(Bounds(0)) == ">= 0"
    assert str(Bounds(0, low_open=True)) == "> 0" and str(Bounds(None, 5)) == "<= 5"


@pytest.mark.parametrize(
    "cls, group, values, message",
    [
        (LossConfig, "loss", {"focal_weight": -1}, "loss.focal_weight=-1: must be >= 0"),
        (LossConfig, "loss", {"alpha": 1.5}, "loss.alpha=1.5: must be in [0, 1]"),
        (OptimConfig, "optim", {"warmup_steps": -10}, "optim.warmup_steps=-10: must be >= 0"),
        (OptimConfig, "optim", {"betas": [0.9, 1.0]}, "optim.betas=[0.9, 1.0]: must be in [0, 1)"),
        (FinetuneConfig, "finetune", {"lora_rank": 0}, "finetune.lora_rank=0: must be >= 1"),
        (
            ModelConfig,
            "model",
            {"image_size": 8192},
            "model.image_size=8192: must be in [16, 4096]",
        ),  # noqa: E501
    ],
)
def test_typed_configs_refuse_values_out_of_range(cls, group, values, message):
    with pytest.raises(ValueError) as caught:
        as_config(cls, values, group)
    assert str(caught.value) == message


def test_typed_configs_take_values_in_range():
    assert as_config(LossConfig, {"focal_weight": 0.0}, "loss").focal_weight == 0.0
    assert as_config(OptimConfig, {"warmup_steps": 0, "betas": [0, 0.5]}, "optim").betas == (0, 0.5)


@pytest.mark.parametrize(
    "option, message",
    [
        ({"min_area": -5}, "data.min_area=-5: must be >= 0"),
        ({"max_area_fraction": 0}, "data.max_area_fraction=0: must be in (0, 1]"),
        ({"max_objects_per_image": 0}, "data.max_objects_per_image=0: must be >= 1"),
    ],
)
def test_the_datamodule_refuses_values_out_of_range(option, message):
    with pytest.raises(ValueError) as caught:
        SamDataModule(**option)
    assert str(caught.value) == message


def _compose(name: str, overrides: list[str]):
    with initialize_config_module("samft.conf", version_base="1.3"):
        return compose(name, overrides=overrides)


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.max_steps=abc", "trainer.max_steps='abc': expected int"),
        ("trainer.max_steps=-5", "trainer.max_steps=-5: must be >= -1"),
        ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps=0: must be >= 1"),
        ("trainer.precision=bf16-mixd", "trainer.precision='bf16-mixd': expected one of ["),
    ],
)
def test_trainer_keys_are_typed_and_bounded(override, message):
    cfg = _compose("train", [override])
    with pytest.raises(ValueError) as caught:
        check_group(cfg.trainer, "trainer", TRAINER_BOUNDS)
    assert str(caught.value).startswith(message)
    check_group(_compose("train", ["trainer=cpu"]).trainer, "trainer", TRAINER_BOUNDS)


@pytest.mark.parametrize(
    "override, message",
    [
        ("box_nms_thresh=abc", "box_nms_thresh='abc': expected float"),
        ("crop_n_layers=-1", "crop_n_layers=-1: must be in [0, 4]"),
        ("points_per_side=100000", "points_per_side=100000: must be in [1, 256]"),
        ("crop_overlap_ratio=1.5", "crop_overlap_ratio=1.5: must be in [0, 1)"),
        ("min_mask_region_area=-1", "min_mask_region_area=-1: must be >= 0"),
    ],
)
def test_automatic_mask_settings_are_typed_and_bounded(override, message):
    with pytest.raises(ValueError) as caught:
        check_settings(_compose("segment", [override]), AUTOMATIC_MASK_SETTINGS, "")
    assert str(caught.value) == message
    check_settings(_compose("segment", []), AUTOMATIC_MASK_SETTINGS, "")  # the defaults pass


def test_segment_says_it_in_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAMFT_COMMAND", raising=False)  # main() sets them: undone after
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    before = signal.getsignal(signal.SIGTERM)
    args = ["samft", "segment", "checkpoint=none.pth", "input=none", f"output={tmp_path}/out"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "crop_overlap_ratio=1.5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "samft segment: error: ValueError: crop_overlap_ratio=1.5: must be in [0, 1)" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the command's stop handler is gone

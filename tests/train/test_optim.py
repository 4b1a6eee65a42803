"""Parameter groups and the learning-rate schedule."""

import math

import pytest
import torch
from torch import nn

from samft.train.optim import OptimConfig, build_optimizer, build_param_groups, lr_multiplier


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.image_encoder = nn.Module()
        self.image_encoder.pos_embed = nn.Parameter(torch.zeros(1, 2, 2, 4))
        self.image_encoder.proj = nn.Linear(4, 4)
        self.image_encoder.norm = nn.LayerNorm(4)
        self.mask_decoder = nn.Linear(4, 4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_groups_split_encoder_decoder_and_decay():
    model = Tiny()
    cfg = OptimConfig(lr=1e-3, encoder_lr=1e-5, weight_decay=0.05)
    groups = {g["name"]: g for g in build_param_groups(list(model.named_parameters()), cfg)}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["encoder"] == {id(model.image_encoder.proj.weight)}
    assert ids["encoder_no_decay"] == {
        id(model.image_encoder.pos_embed),
        id(model.image_encoder.proj.bias),
        id(model.image_encoder.norm.weight),
        id(model.image_encoder.norm.bias),
    }
    assert ids["decoder"] == {id(model.mask_decoder.weight)}
    assert ids["decoder_no_decay"] == {id(model.mask_decoder.bias)}
    assert groups["encoder"]["lr"] == 1e-5 and groups["decoder"]["lr"] == 1e-3
    assert groups["encoder"]["weight_decay"] == 0.05
    assert groups["decoder_no_decay"]["weight_decay"] == 0.0
    frozen = {id(p) for p in model.frozen.parameters()}
    assert not frozen & set().union(*ids.values())


def test_everything_frozen_is_an_error():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        build_param_groups(list(model.named_parameters()), OptimConfig())


def test_warmup_then_cosine():
    cfg = OptimConfig(warmup_steps=10, schedule="cosine", min_lr_ratio=0.0)
    assert lr_multiplier(0, 110, cfg) == pytest.approx(0.1)
    assert lr_multiplier(9, 110, cfg) == pytest.approx(1.0)
    assert lr_multiplier(10, 110, cfg) == pytest.approx(1.0)
    assert lr_multiplier(60, 110, cfg) == pytest.approx(0.5)
    assert lr_multiplier(110, 110, cfg) == pytest.approx(0.0, abs=1e-12)
    cfg.min_lr_ratio = 0.1
    expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2))
    assert lr_multiplier(60, 110, cfg) == pytest.approx(expected)


def test_step_decay():
    cfg = OptimConfig(schedule="step", step_milestones=[0.5, 0.75], step_gamma=0.1)
    assert lr_multiplier(49, 100, cfg) == 1.0
    assert lr_multiplier(50, 100, cfg) == pytest.approx(0.1)
    assert lr_multiplier(80, 100, cfg) == pytest.approx(0.01)


def test_scheduler_drives_each_group():
    model = Tiny()
    cfg = OptimConfig(lr=1.0, encoder_lr=0.5, warmup_steps=2, schedule="constant")
    optimizer, scheduler = build_optimizer(list(model.named_parameters()), cfg, total_steps=10)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["decoder"] == pytest.approx(0.5) and lrs["encoder"] == pytest.approx(0.25)
    optimizer.step()
    scheduler.step()
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["decoder"] == pytest.approx(1.0) and lrs["encoder"] == pytest.approx(0.5)


def test_bad_schedule_is_named():
    with pytest.raises(ValueError, match="optim.schedule"):
        OptimConfig(schedule="linear")

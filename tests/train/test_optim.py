"""Parameter groups and the learning-rate schedule."""

import fnmatch
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from reference_sam2 import import_sam2
from torch import nn

from samft.model.registry import build_sam
from samft.train.config import as_config
from samft.train.module import SamFineTuner
from samft.train.optim import (
    OptimConfig,
    build_optimizer,
    build_param_groups,
    check_layer_decay,
    count_encoder_blocks,
    encoder_layer_id,
    lr_multiplier,
)


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


# ---------------------------------------------------------------- layer-wise lr decay
def _lr_of_each_parameter(model: nn.Module, cfg: OptimConfig) -> dict[str, float]:
    """name -> learning rate of its group; each trainable parameter in exactly one group."""
    model.requires_grad_(True)
    named = list(model.named_parameters())
    lr_of = {}
    for group in build_param_groups(named, cfg):
        for param in group["params"]:
            assert id(param) not in lr_of
            lr_of[id(param)] = group["lr"]
    assert len(lr_of) == len(named)
    return {name: lr_of[id(param)] for name, param in named}


def _expected_rate(name: str, by_prefix: dict[str, float], rest: float) -> float:
    return next((lr for prefix, lr in by_prefix.items() if name.startswith(prefix)), rest)


def test_layer_decay_rates_on_the_tiny_sam_vit():
    """tiny: 4 ViT blocks; decay 0.5, encoder_lr 1e-3: block i at 1e-3 * 0.5^(4 - i), the
    patch embedding at 0.5^5, position tables (pos_embed, each block's rel_pos) and the
    neck at 1e-3, prompt encoder and decoder at lr."""
    rates = _lr_of_each_parameter(
        build_sam("tiny"), OptimConfig(lr=1e-2, encoder_lr=1e-3, layer_decay=0.5)
    )
    by_prefix = {
        "image_encoder.pos_embed": 1e-3,
        "image_encoder.patch_embed.": 3.125e-5,
        "image_encoder.blocks.0.attn.rel_pos": 1e-3,
        "image_encoder.blocks.1.attn.rel_pos": 1e-3,
        "image_encoder.blocks.2.attn.rel_pos": 1e-3,
        "image_encoder.blocks.3.attn.rel_pos": 1e-3,
        "image_encoder.blocks.0.": 6.25e-5,
        "image_encoder.blocks.1.": 1.25e-4,
        "image_encoder.blocks.2.": 2.5e-4,
        "image_encoder.blocks.3.": 5e-4,
        "image_encoder.neck.": 1e-3,
    }
    for name, lr in rates.items():
        assert lr == pytest.approx(_expected_rate(name, by_prefix, 1e-2), rel=1e-12), name
    assert rates["image_encoder.blocks.2.mlp.lin1.weight"] == pytest.approx(2.5e-4, rel=1e-12)


def test_layer_decay_rates_on_sam2_tiny():
    """sam2_tiny: 5 Hiera blocks; decay 0.5, encoder_lr 1e-3: block i at 1e-3 * 0.5^(5 - i),
    the patch embedding at 0.5^6, pos_embed / pos_embed_window and the FPN neck at 1e-3,
    the rest at lr."""
    cfg = OptimConfig(lr=1e-2, encoder_lr=1e-3, layer_decay=0.5, weight_decay=0.1)
    rates = _lr_of_each_parameter(build_sam("sam2_tiny"), cfg)
    by_prefix = {
        "image_encoder.trunk.pos_embed": 1e-3,  # pos_embed and pos_embed_window
        "image_encoder.trunk.patch_embed.": 1.5625e-5,
        "image_encoder.trunk.blocks.0.": 3.125e-5,
        "image_encoder.trunk.blocks.1.": 6.25e-5,
        "image_encoder.trunk.blocks.2.": 1.25e-4,
        "image_encoder.trunk.blocks.3.": 2.5e-4,
        "image_encoder.trunk.blocks.4.": 5e-4,
        "image_encoder.neck.": 1e-3,
    }
    for name, lr in rates.items():
        assert lr == pytest.approx(_expected_rate(name, by_prefix, 1e-2), rel=1e-12), name
    assert rates["image_encoder.trunk.pos_embed_window"] == pytest.approx(1e-3, rel=1e-12)
    # weight decay still splits each depth: block 0's weights decay, its norms do not
    groups = {
        g["name"]: g
        for g in build_param_groups(list(build_sam("sam2_tiny").named_parameters()), cfg)
    }
    assert groups["encoder_layer01"]["weight_decay"] == 0.1
    assert groups["encoder_layer01_no_decay"]["weight_decay"] == 0.0
    assert groups["encoder_layer01"]["lr"] == groups["encoder_layer01_no_decay"]["lr"]


def test_layer_decay_off_keeps_one_encoder_rate():
    rates = _lr_of_each_parameter(build_sam("sam2_tiny"), OptimConfig(lr=1e-2, encoder_lr=1e-3))
    assert {lr for name, lr in rates.items() if name.startswith("image_encoder.")} == {1e-3}


def test_layer_decay_is_metas_rule_on_metas_hiera():
    """The scale of every Hiera parameter equals what Meta's training gives it: its
    `layer_decay_param_modifier` scales layer k by d^(N + 1 - k) with k from Meta's own
    `Hiera.get_layer_id`, and the shipped SAM 2.1 fine-tuning config overrides `*pos_embed*`
    to 1.0 with d = 0.9 on `image_encoder.trunk`: the value the sam2_full / sam2_lora
    recipes take."""
    meta = import_sam2()
    config = Path(meta.__file__).parent / "configs/sam2.1_training"
    config = OmegaConf.load(config / "sam2.1_hiera_b+_MOSE_finetune.yaml")
    (modifier,) = config.trainer.optim.param_group_modifiers
    assert modifier._target_ == "training.optimizer.layer_decay_param_modifier"
    assert modifier.apply_to == "image_encoder.trunk"
    assert OmegaConf.to_container(modifier.overrides) == [{"pattern": "*pos_embed*", "value": 1.0}]
    decay = modifier.layer_decay_value
    for recipe in ("sam2_full", "sam2_lora"):
        with initialize_config_module("samft.conf", version_base="1.3"):
            assert compose("train", [f"+experiment={recipe}"]).optim.layer_decay == decay

    trunk = meta.modeling.backbones.hieradet.Hiera(
        embed_dim=16, num_heads=2, stages=(1, 2, 3, 2), global_att_blocks=(3,),
        window_spec=(8, 4, 4, 4), window_pos_embed_bkg_spatial_size=(4, 4),
    )  # fmt: skip
    names = [f"image_encoder.trunk.{n}" for n, _ in trunk.named_parameters()]
    num_blocks = count_encoder_blocks(names)
    assert num_blocks == trunk.get_num_layers() == 8
    for name in names:
        if fnmatch.fnmatchcase(name, "*pos_embed*"):
            meta_scale = 1.0
        else:
            meta_scale = decay ** (num_blocks + 1 - trunk.get_layer_id(name))
        ours = decay ** (num_blocks + 1 - encoder_layer_id(name, num_blocks))
        assert ours == pytest.approx(meta_scale, rel=1e-12), name


def test_layer_decay_out_of_range_is_one_line_naming_the_key():
    for value in (0, 1.5, -0.9):
        with pytest.raises(ValueError) as caught:
            as_config(OptimConfig, {"layer_decay": value}, "optim")
        assert str(caught.value) == f"optim.layer_decay={value}: must be in (0, 1]"
    assert as_config(OptimConfig, {"layer_decay": 1.0}, "optim").layer_decay == 1.0


def test_layer_decay_reaches_lora_adapters_and_tinyvit_is_refused_at_build():
    """Through the LightningModule: sam2_tiny's LoRA adapters on block i take
    1e-3 * 0.5^(5 - i); LiteMedSAM's TinyViT (no numbered blocks) is refused when the module
    is built, before any data or training."""
    module = SamFineTuner(
        model={"variant": "sam2_tiny"},
        finetune={"image_encoder": "lora", "lora_rank": 2, "lora_alpha": 2.0},
        optim={"lr": 1e-2, "encoder_lr": 1e-3, "layer_decay": 0.5},
    )
    rates = {}
    for group in build_param_groups(list(module.model.named_parameters()), module.optim_config):
        rates.update({id(p): group["lr"] for p in group["params"]})
    for name, param in module.model.named_parameters():
        if ".lora_" in name:
            block = int(name.split("blocks.")[1].split(".")[0])
            assert rates[id(param)] == pytest.approx(1e-3 * 0.5 ** (5 - block), rel=1e-12)
    names = [n for n, _ in build_sam("lite_medsam").named_parameters()]
    check_layer_decay(names, OptimConfig())  # off: nothing to check
    with pytest.raises(ValueError, match=r"^optim.layer_decay applies to ViT and Hiera"):
        SamFineTuner(model={"variant": "lite_medsam"}, optim={"layer_decay": 0.9})

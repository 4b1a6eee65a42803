"""AdamW parameter groups, layer-wise learning-rate decay and the warmup + decay schedule.

Kept apart from the LightningModule so both can be tested on plain modules: which weights
get decay and which learning rate is a frequent source of silent mistakes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from samft.bounds import FRACTION, NON_NEGATIVE, POSITIVE, PROBABILITY_BELOW_ONE, Bounds

# Parameters whose name contains one of these never get weight decay: position embeddings
# (absolute and relative), TinyViT's attention biases and the learned prompt embeddings are
# lookup tables, not weights.
NO_DECAY_NAME_PARTS = (
    "pos_embed",
    "rel_pos",
    "positional_encoding",
    "embed.weight",
    "attention_biases",  # TinyViT's learned attention biases
)

# Layer-wise lr decay: the image encoder's stem and numbered blocks, for SAM's ViT
# (`image_encoder.blocks.3.`) and SAM 2's Hiera (`image_encoder.trunk.blocks.3.`).
ENCODER_BLOCK = re.compile(r"(?:^|\.)image_encoder\.(?:trunk\.)?blocks\.(\d+)\.")
ENCODER_STEM = re.compile(r"(?:^|\.)image_encoder\.(?:trunk\.)?patch_embed\.")
# Position tables keep the encoder's rate: Meta's Hiera.get_layer_id puts `rel_pos` at the
# top and its SAM 2.1 training config overrides `*pos_embed*` to a scale of 1.0.
UNDECAYED_NAME_PARTS = ("pos_embed", "rel_pos")


@dataclass
class OptimConfig:
    """Optimiser and schedule settings; every field is a plain value (Hydra group `optim`).

    `encoder_lr` applies to the image encoder's trainable weights (LoRA adapters or the full
    encoder); None means the same as `lr`. `layer_decay` d (None: off) scales it down the
    encoder's depth as Meta's SAM 2 training does: of N blocks, block i (from 0) takes
    `encoder_lr * d**(N - i)`, the patch embedding `d**(N + 1)`, position embeddings and
    the rest of the encoder (the neck) `encoder_lr` (see `encoder_layer_id`). `schedule` is
    `cosine`, `step` or `constant`; `step_milestones` are fractions of `total_steps` at which
    the rate is multiplied by `step_gamma` (the SAM paper decays by 10x at about 90% and
    96% of training).
    """

    lr: float = 1e-4
    encoder_lr: float | None = None
    layer_decay: float | None = None
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    step_milestones: list[float] = field(default_factory=lambda: [0.9, 0.96])
    step_gamma: float = 0.1

    BOUNDS: ClassVar[dict[str, Bounds]] = {
        "layer_decay": Bounds(0, 1, low_open=True),
        "weight_decay": NON_NEGATIVE,
        "betas": PROBABILITY_BELOW_ONE,
        "eps": POSITIVE,
        "warmup_steps": NON_NEGATIVE,
        "min_lr_ratio": FRACTION,
        "step_milestones": FRACTION,
        "step_gamma": Bounds(0, 1, low_open=True),
    }

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(
                f"optim.schedule must be 'cosine', 'step' or 'constant', got '{self.schedule}'"
            )
        if self.lr <= 0 or (self.encoder_lr is not None and self.encoder_lr <= 0):
            raise ValueError(
                f"learning rates must be positive (lr={self.lr}, encoder_lr={self.encoder_lr})"
            )
        self.betas = tuple(self.betas)
        self.step_milestones = list(self.step_milestones)


def uses_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norm scales (1-D tensors) and embedding tables get no weight decay."""
    if param.ndim <= 1:
        return False
    return not any(part in name for part in NO_DECAY_NAME_PARTS)


def count_encoder_blocks(names: list[str]) -> int:
    """N, the number of numbered blocks of the image encoder among parameter `names`
    (1 + the highest index: ViT's `image_encoder.blocks.i.`, Hiera's `...trunk.blocks.i.`)."""
    indices = [int(m.group(1)) for m in map(ENCODER_BLOCK.search, names) if m]
    return max(indices) + 1 if indices else 0


def encoder_layer_id(name: str, num_blocks: int) -> int:
    """Depth of an image-encoder parameter for layer-wise lr decay, as Meta's
    `Hiera.get_layer_id` counts it: 0 for the patch embedding, i + 1 for block i, and
    N + 1 (the top: no decay) for position embeddings, relative position tables and
    everything after the blocks (the neck)."""
    if any(part in name for part in UNDECAYED_NAME_PARTS):
        return num_blocks + 1
    if ENCODER_STEM.search(name):
        return 0
    block = ENCODER_BLOCK.search(name)
    return int(block.group(1)) + 1 if block else num_blocks + 1


def check_layer_decay(names: list[str], config: OptimConfig) -> None:
    """ValueError when `optim.layer_decay` is set but the model's image encoder (parameter
    `names`) has no numbered blocks (TinyViT's `layers.s.blocks.j`: MobileSAM, LiteMedSAM)."""
    if config.layer_decay is None:
        return
    num_blocks = count_encoder_blocks(names)
    has_encoder = any(n.startswith("image_encoder.") or ".image_encoder." in n for n in names)
    if has_encoder and num_blocks == 0:
        raise ValueError(
            "optim.layer_decay applies to ViT and Hiera image encoders (SAM ViT-B/L/H, "
            "SAM 2); this model's encoder has no image_encoder.blocks.<i> (TinyViT: "
            "MobileSAM, LiteMedSAM): set optim.layer_decay=null"
        )


def build_param_groups(
    named_parameters: list[tuple[str, nn.Parameter]], config: OptimConfig
) -> list[dict]:
    """Split trainable parameters by (encoder depth or decoder) x (decay or not).

    Names are those of the `Sam` / `Sam2` module: parameters under `image_encoder.` take
    `config.encoder_lr`, times `layer_decay ** (N + 1 - encoder_layer_id(name))` when
    `config.layer_decay` is set (N encoder blocks); the rest take `config.lr`. Groups are
    named `encoder`, `encoder_layer<k>` (layer k < N + 1 under layer decay), `decoder`, with
    `_no_decay` for the weights without weight decay. Empty groups are left out.
    """
    names = [name for name, _ in named_parameters]
    check_layer_decay(names, config)
    num_blocks = count_encoder_blocks(names)
    top = num_blocks + 1
    # key: (is_encoder, encoder layer id, decay); the decoder's layer id is the top
    groups: dict[tuple[bool, int, bool], list[nn.Parameter]] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        is_encoder = name.startswith("image_encoder.") or ".image_encoder." in name
        layer = top
        if is_encoder and config.layer_decay is not None:
            layer = encoder_layer_id(name, num_blocks)
        groups.setdefault((is_encoder, layer, uses_weight_decay(name, param)), []).append(param)
    encoder_lr = config.encoder_lr if config.encoder_lr is not None else config.lr
    result = []
    for (is_encoder, layer, decay), params in sorted(groups.items()):
        if is_encoder:
            scale = config.layer_decay ** (top - layer) if config.layer_decay else 1.0
            lr, name = (
                encoder_lr * scale,
                "encoder" if layer == top else f"encoder_layer{layer:02d}",
            )
        else:
            lr, name = config.lr, "decoder"
        result.append(
            {
                "params": params,
                "lr": lr,
                "weight_decay": config.weight_decay if decay else 0.0,
                "name": f"{name}{'' if decay else '_no_decay'}",
            }
        )
    if not result:
        raise ValueError("nothing to train: every parameter is frozen (check `finetune`)")
    return result


def lr_multiplier(step: int, total_steps: int, config: OptimConfig) -> float:
    """Factor applied to each group's base learning rate at optimiser step `step`."""
    if config.warmup_steps > 0 and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant" or total_steps <= 0:
        return 1.0
    if config.schedule == "step":
        passed = sum(step >= m * total_steps for m in config.step_milestones)
        return config.step_gamma**passed
    decay_steps = max(1, total_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine


def build_optimizer(
    named_parameters: list[tuple[str, nn.Parameter]], config: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """AdamW over the parameter groups, with a per-step LambdaLR schedule."""
    optimizer = torch.optim.AdamW(
        build_param_groups(named_parameters, config), betas=config.betas, eps=config.eps
    )
    scheduler = LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps, config))
    return optimizer, scheduler

"""AdamW parameter groups and the warmup + decay learning-rate schedule.

Kept apart from the LightningModule so both can be tested on plain modules: which weights
get decay and which learning rate is a frequent source of silent mistakes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from samft.train.bounds import FRACTION, NON_NEGATIVE, POSITIVE, PROBABILITY_BELOW_ONE, Bounds

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


@dataclass
class OptimConfig:
    """Optimiser and schedule settings; every field is a plain value (Hydra group `optim`).

    `encoder_lr` applies to the image encoder's trainable weights (LoRA adapters or the full
    encoder); None means the same as `lr`. `schedule` is `cosine`, `step` or `constant`;
    `step_milestones` are fractions of `total_steps` at which the rate is multiplied by
    `step_gamma` (the SAM paper decays by 10x at about 90% and 96% of training).
    """

    lr: float = 1e-4
    encoder_lr: float | None = None
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    step_milestones: list[float] = field(default_factory=lambda: [0.9, 0.96])
    step_gamma: float = 0.1

    BOUNDS: ClassVar[dict[str, Bounds]] = {
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


def build_param_groups(
    named_parameters: list[tuple[str, nn.Parameter]], config: OptimConfig
) -> list[dict]:
    """Split trainable parameters by (encoder or not) x (decay or not).

    Names are those of the `Sam` module: parameters under `image_encoder.` take
    `config.encoder_lr`. Empty groups are left out.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        is_encoder = name.startswith("image_encoder.") or ".image_encoder." in name
        groups.setdefault((is_encoder, uses_weight_decay(name, param)), []).append(param)
    encoder_lr = config.encoder_lr if config.encoder_lr is not None else config.lr
    result = []
    for (is_encoder, decay), params in sorted(groups.items()):
        result.append(
            {
                "params": params,
                "lr": encoder_lr if is_encoder else config.lr,
                "weight_decay": config.weight_decay if decay else 0.0,
                "name": f"{'encoder' if is_encoder else 'decoder'}{'' if decay else '_no_decay'}",
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

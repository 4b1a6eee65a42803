"""Typed configs of the training module, one dataclass per Hydra group.

Each is built from a plain dict by `as_config`, which names the group and the known keys
on a typo and checks each value's type, so a bad override stops the run at start-up
rather than an hour into it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from samft.bounds import (
    AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY_BELOW_ONE,
    Bounds,
    check_bounds,
)
from samft.train.losses import IOU_LOSSES

ENCODER_MODES = ("frozen", "lora", "full")
CLICK_MODES = ("random", "center")
FEEDBACK_MASKS = ("predicted", "lowest_loss")
LOSS_ROUNDS = ("all", "first", "last", "first_and_sampled")


@dataclass
class ModelConfig:
    """Which SAM to start from (Hydra group `model`)."""

    variant: str = "vit_b"
    checkpoint: str | None = None  # a file, a transformers folder or known weights' name
    weights_cache: str | None = None  # where known weights are cached (None: $SAMFT_CACHE)
    image_size: int | None = None
    activation_checkpointing: bool = False
    compile: bool | str = False  # torch.compile encoder and decoder; a string names the backend

    BOUNDS: ClassVar[dict[str, Bounds]] = {"image_size": Bounds(16, 4096)}


@dataclass
class FinetuneConfig:
    """What is trained (Hydra group `finetune`): encoder frozen, LoRA-adapted or full."""

    image_encoder: str = "frozen"
    prompt_encoder: bool = True
    mask_decoder: bool = True
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["qkv"])

    BOUNDS: ClassVar[dict[str, Bounds]] = {
        "lora_rank": AT_LEAST_ONE,
        "lora_alpha": POSITIVE,
        "lora_dropout": PROBABILITY_BELOW_ONE,
    }

    def __post_init__(self) -> None:
        _one_of("finetune.image_encoder", self.image_encoder, ENCODER_MODES)


@dataclass
class InteractiveConfig:
    """How prompts are iterated in training and validation (Hydra group `interactive`).

    `multimask_output` for the first prompt: `auto` answers a single positive point (the
    ambiguous prompt) with the three multimask outputs and any other prompt with the
    single-mask output, as the SAM paper trains and as users call the predictor; `true` or
    `false` force one kind. Later rounds always use the single-mask output.

    `feedback_mask` says which of the multimask outputs a later round builds on (its low-res
    logits fed back, its error region clicked): `lowest_loss`, the one the loss trains (the
    default; the recipes were measured with it), or `predicted`, the one the IoU head scores
    highest, as the SAM paper describes and as inference and validation choose (so training
    also sees the clicks that correct the head's wrong picks; docs/results.md, run I).
    `correction_rounds` add one click each from the error region of that mask, where
    `click_mode` says (`random` pixel or `center`: farthest from the region's border);
    `mask_only_rounds` then feed back the previous mask with no new point (the paper uses 8
    and 2). `loss_rounds` says which rounds' losses are trained: `all`, `first`, `last`, or
    `first_and_sampled`: each step stops after a number of later rounds drawn uniformly from
    1 to all of them and trains the first and that last round, so every click count is
    trained at the cost of two backward passes (rounds whose loss is not trained run without
    gradients in every mode).
    Validation simulates `max(val_clicks)` centre clicks and reports each listed count.
    """

    multimask_output: bool | str = "auto"
    correction_rounds: int = 0
    mask_only_rounds: int = 0
    click_mode: str = "random"
    feedback_mask: str = "lowest_loss"
    loss_rounds: str = "all"
    val_clicks: list[int] = field(default_factory=lambda: [1, 3, 5])

    BOUNDS: ClassVar[dict[str, Bounds]] = {
        "correction_rounds": NON_NEGATIVE,
        "mask_only_rounds": NON_NEGATIVE,
        "val_clicks": AT_LEAST_ONE,
    }

    def __post_init__(self) -> None:
        _one_of("interactive.loss_rounds", self.loss_rounds, LOSS_ROUNDS)
        _one_of("interactive.click_mode", self.click_mode, CLICK_MODES)
        _one_of("interactive.feedback_mask", self.feedback_mask, FEEDBACK_MASKS)
        _one_of("interactive.multimask_output", self.multimask_output, (True, False, "auto"))
        if self.correction_rounds < 0 or self.mask_only_rounds < 0:
            raise ValueError("interactive rounds must be >= 0")


@dataclass
class LossConfig:
    """Loss weights and focal-loss shape (Hydra group `loss`): the arguments of `SamLoss`,
    and the weight of the automatic-mode points' loss (`samft.train.automatic_loss`),
    added to the prompted loss when batches carry such points.

    `iou_loss` is `mse` (the SAM paper) or `l1` (SAM 2); `object_score_weight` weighs the
    BCE on SAM 2's object-score logit (0: not trained; SAM has none). The defaults are SAM's
    recipe; `loss=sam2` is Meta's SAM 2 one (focal 20, dice 1, IoU L1 1, object score 1).
    `prompted_weight` scales the prompted loss (0: no prompt is decoded in training, e.g. to
    train the instance head alone); `instance_weight` is the instance head's loss
    (`samft.train.instance_loss`) beside it, and `instance_bce_weight` its foreground
    cross-entropy beside the dice, when the module has a head."""

    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    alpha: float = 0.25
    gamma: float = 2.0
    supervise_all_iou: bool = True
    iou_loss: str = "mse"
    object_score_weight: float = 0.0
    automatic_weight: float = 1.0
    prompted_weight: float = 1.0
    instance_weight: float = 1.0
    instance_bce_weight: float = 1.0

    BOUNDS: ClassVar[dict[str, Bounds]] = {
        "focal_weight": NON_NEGATIVE,
        "dice_weight": NON_NEGATIVE,
        "iou_weight": NON_NEGATIVE,
        "alpha": FRACTION,
        "gamma": NON_NEGATIVE,
        "object_score_weight": NON_NEGATIVE,
        "automatic_weight": NON_NEGATIVE,
        "prompted_weight": NON_NEGATIVE,
        "instance_weight": NON_NEGATIVE,
        "instance_bce_weight": NON_NEGATIVE,
    }
    # the weights of the other losses, not arguments of `SamLoss`
    OUTER_WEIGHTS: ClassVar[tuple[str, ...]] = (
        "automatic_weight",
        "prompted_weight",
        "instance_weight",
        "instance_bce_weight",
    )

    def __post_init__(self) -> None:
        _one_of("loss.iou_loss", self.iou_loss, IOU_LOSSES)

    def sam_loss_arguments(self) -> dict:
        """The fields `SamLoss` takes."""
        values = dataclasses.asdict(self)
        for key in self.OUTER_WEIGHTS:
            values.pop(key)
        return values


@dataclass
class InstanceHeadConfig:
    """The instance head for prompt-free instance segmentation (`samft.model.instance_head`;
    key `instance_head`): off unless `enabled`. `width`, `min_width` and `image_channels`
    are `InstanceHead`'s arguments; its upsampling (input size / embedding size) and its
    skips (SAM 2's finer levels, `instance_skip_channels`) follow from the model."""

    enabled: bool = False
    width: int = 64
    min_width: int = 16
    image_channels: int = 16

    BOUNDS: ClassVar[dict[str, Bounds]] = {
        "width": AT_LEAST_ONE,
        "min_width": AT_LEAST_ONE,
        "image_channels": NON_NEGATIVE,
    }

    def head_arguments(self) -> dict:
        """The fields `InstanceHead` takes."""
        return {
            "width": self.width,
            "min_width": self.min_width,
            "image_channels": self.image_channels,
        }


def _one_of(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {list(allowed)}, got {value!r}")


def value_fits(value: Any, annotation: Any) -> bool:
    """Whether `value` fits the dataclass field type `annotation` (plain config types)."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(value_fits(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (list, tuple):
        return isinstance(value, Sequence) and not isinstance(value, str)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def as_config(cls: type, value: Any, group: str) -> Any:
    """Build config dataclass `cls` from a dict; unknown keys and ill-typed values are a
    ValueError naming the group, the key, the value and what was expected."""
    if isinstance(value, cls):
        return value
    value = dict(value or {})
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in config group '{group}'; known keys: {sorted(known)}"
        )
    for key, item in value.items():
        if not value_fits(item, hints[key]):
            expected = getattr(hints[key], "__name__", None) or str(hints[key])
            raise ValueError(f"{group}.{key}={item!r}: expected {expected.replace('typing.', '')}")
    check_bounds(value, getattr(cls, "BOUNDS", {}), group)
    return cls(**value)

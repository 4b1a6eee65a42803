"""Check a config group against the signature of the class it builds, before building it.

`data` and `prompts` are built by Hydra's `instantiate` from their `_target_`; a value of
the wrong type (`data.batch_size=abc`) or an unknown key would otherwise surface deep in a
constructor as `TypeError: '<' not supported ...`. This names the key, the value and the
expected type instead.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from samft.bounds import (
    AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    PROBABILITY_BELOW_ONE,
    Bounds,
    check_bounds,
)
from samft.train.config import value_fits

# The automatic mask generator's settings, as `segment` takes them and `eval` takes them
# under `instance.`: type and allowed range of each.
AUTOMATIC_MASK_SETTINGS: dict[str, tuple[Any, Bounds]] = {
    "points_per_side": (int, Bounds(1, 256)),
    "points_per_batch": (int, AT_LEAST_ONE),
    "pred_iou_thresh": (float | None, FRACTION),
    "stability_score_thresh": (float | None, FRACTION),
    "stability_score_offset": (float, NON_NEGATIVE),
    "box_nms_thresh": (float, FRACTION),
    "covered_thresh": (float | None, FRACTION),
    "crop_n_layers": (int, Bounds(0, 4)),
    "crop_overlap_ratio": (float, PROBABILITY_BELOW_ONE),
    "crop_n_points_downscale_factor": (int, AT_LEAST_ONE),
    "min_mask_region_area": (int, NON_NEGATIVE),
    "min_object_size": (int, NON_NEGATIVE),
}

# The instance head's watershed thresholds (`segment` and `eval instance.*`): None defers to
# the checkpoint's sidecar, else the defaults.
HEAD_SETTINGS: dict[str, tuple[Any, Bounds]] = {
    "foreground_thresh": (float | None, FRACTION),
    "center_thresh": (float | None, FRACTION),
    "boundary_thresh": (float | None, FRACTION),
    "min_size": (int | None, NON_NEGATIVE),
}

# Lightning Trainer arguments whose range the type alone does not fix.
TRAINER_BOUNDS: dict[str, Bounds] = {
    "max_steps": Bounds(-1),
    "max_epochs": Bounds(-1),
    "min_steps": NON_NEGATIVE,
    "min_epochs": NON_NEGATIVE,
    "num_nodes": AT_LEAST_ONE,
    "log_every_n_steps": AT_LEAST_ONE,
    "check_val_every_n_epoch": AT_LEAST_ONE,
    "accumulate_grad_batches": AT_LEAST_ONE,
    "gradient_clip_val": NON_NEGATIVE,
    "num_sanity_val_steps": Bounds(-1),
    "limit_train_batches": NON_NEGATIVE,
    "limit_val_batches": NON_NEGATIVE,
}


def check_settings(cfg: DictConfig, settings: dict[str, tuple[Any, Bounds]], prefix: str) -> None:
    """ValueError `PREFIXkey=value: expected TYPE` or `...: must be RANGE` for the first bad
    value among `settings` present in `cfg`."""
    values = {key: cfg[key] for key in settings if key in cfg}
    for key, (annotation, _) in settings.items():
        if key in values and not value_fits(values[key], annotation):
            raise ValueError(f"{prefix}{key}={values[key]!r}: expected {_describe(annotation)}")
    check_bounds(values, {k: b for k, (_, b) in settings.items()}, prefix.rstrip("."))


def check_group(
    cfg: DictConfig | None, group: str, bounds: dict[str, Bounds] | None = None
) -> None:
    """ValueError naming `group.key` for an unknown key, an ill-typed value of `cfg` or one
    outside `bounds`. Values that cannot be resolved yet (`${hydra:...}`) are skipped."""
    if cfg is None or "_target_" not in cfg:
        return
    target = get_class(cfg._target_)
    hints = typing.get_type_hints(target.__init__)
    params = inspect.signature(target).parameters
    values = _resolved_values(cfg)
    check_bounds(values, bounds or {}, group)
    for key, value in values.items():
        if key.startswith("_"):
            continue
        if key not in params:
            known = sorted(k for k in params if k != "self")
            raise ValueError(f"unknown key {group}.{key}; known keys of '{group}': {known}")
        if key in hints and not value_fits(value, hints[key]):
            raise ValueError(f"{group}.{key}={value!r}: expected {_describe(hints[key])}")


def _resolved_values(cfg: DictConfig) -> dict[str, Any]:
    values = {}
    for key in cfg:
        try:
            node = cfg[key]
        except OmegaConfBaseException:  # an interpolation only the running app resolves
            continue
        plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        values[str(key)] = plain
    return values


def check_required(cfg: DictConfig, required: dict[str, str], command: str) -> None:
    """One ValueError naming every unset required key of `cfg`, spelled as the command line
    takes it (`required`: config key -> e.g. "prompts=FILE"), with the command's usage."""
    unset = [spelling for key, spelling in required.items() if OmegaConf.is_missing(cfg, key)]
    if unset:
        raise ValueError(
            f"missing {' '.join(unset)}; usage: python -m samft {command} "
            + " ".join(required.values())
        )


def _describe(annotation: Any) -> str:
    """A type as a user reads it: `int`, `float | None`, `one of ['32-true', ...]`."""
    literals = _literal_values(annotation)
    if literals:
        return f"one of {literals}"
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _literal_values(annotation: Any) -> list:
    """The values a Literal (or a union of Literals and None) allows; [] for other types."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return list(typing.get_args(annotation))
    if origin not in (typing.Union, types.UnionType):
        return []
    values: list = []
    for arg in typing.get_args(annotation):
        if arg is type(None):
            values.append(None)
            continue
        inner = _literal_values(arg)
        if not inner:
            return []
        values += inner
    return values

"""Check a config group against the signature of the class it builds, before building it.

`data` and `prompts` are built by Hydra's `instantiate` from their `_target_`; a value of
the wrong type (`data.batch_size=abc`) or an unknown key would otherwise surface deep in a
constructor as `TypeError: '<' not supported ...`. This names the key, the value and the
expected type instead.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from samft.train.config import value_fits


def check_group(cfg: DictConfig | None, group: str) -> None:
    """ValueError naming `group.key` for an unknown key or an ill-typed value of `cfg`."""
    if cfg is None or "_target_" not in cfg:
        return
    target = get_class(cfg._target_)
    hints = typing.get_type_hints(target.__init__)
    params = inspect.signature(target).parameters
    values = OmegaConf.to_container(cfg, resolve=True)
    for key, value in values.items():
        if key.startswith("_"):
            continue
        if key not in params:
            known = sorted(k for k in params if k != "self")
            raise ValueError(f"unknown key {group}.{key}; known keys of '{group}': {known}")
        if key in hints and not value_fits(value, hints[key]):
            raise ValueError(f"{group}.{key}={value!r}: expected {_describe(hints[key])}")


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
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")

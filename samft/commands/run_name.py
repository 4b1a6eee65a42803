"""Run names from the data: `outputs/<recipe>-<dataset>/<date>` instead of every run of a
recipe in one folder, whatever data it trained on.

`${samft_dataset:${data.train}}` (an OmegaConf resolver, registered when Hydra reads
`samft.conf`) gives a short name for a dataset spec: the nearest folder or file name of
its paths that says more than "images", "train" or "annotations".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from omegaconf import OmegaConf

GENERIC = re.compile(
    r"^(images?|imgs?|masks?|labels?|annotations?|anns?|data|train|val|valid|validation|test)"
    r"([_-]?(train|val|valid|test|\d+))?$",
    re.IGNORECASE,
)
PATH_KEYS = ("annotations", "images", "root", "masks")


def dataset_name(spec: Any) -> str:
    """A short, path-safe name of a dataset spec (`{"images": "cells/train/images", ...}`
    -> "cells"); "data" when nothing names it."""
    if not isinstance(spec, Mapping):
        spec = OmegaConf.to_container(spec, resolve=True) if spec is not None else {}
    for key in PATH_KEYS:
        value = spec.get(key) if isinstance(spec, Mapping) else None
        if not value or not isinstance(value, str) or value == "???":
            continue
        path = PurePath(value)
        for part in (path.stem, *(p.name for p in path.parents)):
            if part and part not in (".", "..") and not GENERIC.match(part):
                return re.sub(r"[^A-Za-z0-9_.-]+", "_", part)
    return "data"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("samft_dataset"):
        OmegaConf.register_new_resolver("samft_dataset", dataset_name)

"""Where a model runs: `auto` is CUDA when there is a GPU, else the CPU."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda if available, else cpu; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)

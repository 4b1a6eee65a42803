"""Refuse weights that hold NaN/Inf, by file and tensor name."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from samft.weights.files import CheckpointError


def non_finite_keys(state_dict: Mapping[str, Tensor]) -> list[str]:
    """The floating-point tensors of `state_dict` holding a NaN or an Inf, in order."""
    return [
        key
        for key, value in state_dict.items()
        if isinstance(value, Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]


def assert_finite(state_dict: Mapping[str, Tensor], path: str | Path) -> None:
    """Raise `CheckpointError` naming `path` and the first non-finite tensors."""
    bad = non_finite_keys(state_dict)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(
            f"checkpoint {path}: tensor {', '.join(bad[:3])}{more} holds NaN/Inf; the run that "
            "wrote it diverged. Use an earlier checkpoint (e.g. best-*.ckpt) or retrain with "
            "a lower optim.lr"
        )

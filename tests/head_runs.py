"""A samft Lightning checkpoint of a tiny SAM (or SAM 2) with a random instance head, as
`samft train` with `instance_head.enabled=true` writes it: the head tests' shared fixture."""

from __future__ import annotations

from pathlib import Path

import torch

from samft.train.module import SamFineTuner


def save_head_checkpoint(path: Path, variant: str, image_size: int) -> SamFineTuner:
    """Write `path` (seeded, so every test module gets the same weights) and return the
    module it holds: `variant` at `image_size` px with a head of width 16 and 4 image
    channels."""
    torch.manual_seed(0)
    module = SamFineTuner(
        model={"variant": variant, "image_size": image_size},
        instance_head={"enabled": True, "width": 16, "image_channels": 4},
    )
    torch.save(
        {
            "pytorch-lightning_version": "2.5.0",
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
        },
        path,
    )
    return module

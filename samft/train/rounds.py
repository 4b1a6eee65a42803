"""The interactive loop of a training step: how many rounds run, which are trained, and
the prompts of the next round (SAM paper: a correction click from the error region of the
chosen mask, its low-res logits fed back as the mask prompt)."""

from __future__ import annotations

import torch
from torch import Tensor

from samft.model.prompts import Prompts
from samft.train.clicks import sample_correction_points
from samft.train.config import InteractiveConfig


def round_plan(cfg: InteractiveConfig, step: int) -> tuple[int, set[int]]:
    """How many rounds a step runs (the first prompt, then correction, then mask-only
    rounds) and which of them have their loss trained. `first_and_sampled` draws the last
    round from a generator seeded by `step`, so DDP ranks agree."""
    num_rounds = 1 + cfg.correction_rounds + cfg.mask_only_rounds
    if cfg.loss_rounds == "first_and_sampled" and num_rounds > 1:
        generator = torch.Generator().manual_seed(step)
        last = 1 + int(torch.randint(num_rounds - 1, (1,), generator=generator))
        return last + 1, {0, last}
    counted = {
        "all": range(num_rounds),
        "first": [0],
        "last": [num_rounds - 1],
        "first_and_sampled": [0],
    }
    return num_rounds, set(counted[cfg.loss_rounds])


def next_round_prompts(
    prompts: Prompts,
    best_low_res: Tensor,
    pred: Tensor | None,
    gt: Tensor,
    valid: Tensor,
    click_mode: str = "random",
) -> Prompts:
    """The prompts of the next round: the chosen low-res logits (P x s x s) fed back as the
    mask prompt and, when the thresholded prediction `pred` (P x S x S bool, input frame) is
    given, one correction click from its error region against `gt` appended (P x (n+1) x 2)."""
    coords, labels = prompts.coords, prompts.labels
    if pred is not None:
        new_coords, new_labels = sample_correction_points(pred, gt, valid, mode=click_mode)
        coords = torch.cat([coords, new_coords.to(coords.dtype)], dim=1)
        labels = torch.cat([labels, new_labels.to(labels.dtype)], dim=1)
    has_mask = torch.ones_like(prompts.has_mask_input)
    return Prompts(coords, labels, best_low_res[:, None], has_mask)

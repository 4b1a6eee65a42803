"""Prompts as the network reads them: label values, prompt types and the batched tuple.

This is the one home of these constants; data, training, evaluation and inference import
them from here. Coordinates are (x, y) pixels in the *input* frame (long side S), the frame
the prompt encoder expects (it adds the half-pixel shift itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

# Point labels, as the official prompt encoder reads them.
LABEL_PAD = -1
LABEL_NEGATIVE = 0
LABEL_POSITIVE = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3

# Prompt types, one per object (`SamBatch.prompt_types`).
PROMPT_ONE_POINT = 0
PROMPT_POINTS = 1
PROMPT_BOX = 2
PROMPT_TYPE_NAMES = {PROMPT_ONE_POINT: "one_point", PROMPT_POINTS: "points", PROMPT_BOX: "box"}


class Prompts(NamedTuple):
    """The prompts of P objects, padded to K tokens.

    coords:          P x K x 2 float32, (x, y) in the input frame
    labels:          P x K long: 1 / 0 points, 2 / 3 box corners, -1 padding
    mask_inputs:     P x 1 x S/4 x S/4 float low-res logits (rows without one are ignored)
    has_mask_input:  P bool, which rows use their mask input
    """

    coords: Tensor
    labels: Tensor
    mask_inputs: Tensor
    has_mask_input: Tensor


def pad_tokens(coords: Sequence[Tensor], labels: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """P prompts of K_i tokens (K_i x 2 coords, K_i labels) -> P x K x 2 and P x K, padded
    with label -1 at (0, 0); K is the longest prompt (at least 1)."""
    tokens = max([len(lab) for lab in labels] + [1])
    out_coords = torch.zeros((len(labels), tokens, 2), dtype=torch.float32)
    out_labels = torch.full((len(labels), tokens), LABEL_PAD, dtype=torch.long)
    for i, (xy, lab) in enumerate(zip(coords, labels, strict=True)):
        out_coords[i, : len(lab)] = torch.as_tensor(xy, dtype=torch.float32)
        out_labels[i, : len(lab)] = torch.as_tensor(lab, dtype=torch.long)
    return out_coords, out_labels

"""Batch samples with different numbers of objects and prompt tokens into padded tensors.

The batch (what the training module reads), for B images and P objects in total:

    images              list[B] uint8 3 x h_i x w_i, input frame, not normalised or padded
    input_sizes         B x 2 long (h_i, w_i)
    original_sizes      B x 2 long (H_i, W_i), before the resize (after augmentation)
    image_ids           list[B] str
    gt_masks            P x S x S bool, input frame, zero-padded bottom/right
    object_image_index  P long, index of each object's image
    point_coords        P x K x 2 float (x, y), input frame; K = most tokens of any object
    point_labels        P x K long: 1 / 0 points, 2 / 3 box corners, -1 padding
    prompt_types        P long (PROMPT_ONE_POINT, PROMPT_POINTS, PROMPT_BOX)
    mask_inputs         P x 1 x S/4 x S/4 float logits, zeros where unused
    has_mask_input      P bool
    object_areas        P float, pixels before the resize
    category_ids        P long, -1 where the format has none
    embeddings          B x C x h x w fp16, only when the samples carry cached embeddings
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from samft.data.prompts import LABEL_PAD


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collate `SamDataset` samples into the batch described in the module doc."""
    if not samples:
        raise ValueError("collate_samples: got an empty list of samples")
    size = max(int(s["input_size"].max()) for s in samples)  # S: longest side of every image
    low = size // 4
    counts = [len(s["prompt_types"]) for s in samples]
    total = sum(counts)
    tokens = max([s["point_labels"].shape[1] for s in samples if len(s["prompt_types"])] + [1])

    gt_masks = torch.zeros((total, size, size), dtype=torch.bool)
    coords = torch.zeros((total, tokens, 2), dtype=torch.float32)
    labels = torch.full((total, tokens), LABEL_PAD, dtype=torch.long)
    mask_inputs = torch.zeros((total, 1, low, low), dtype=torch.float32)
    start = 0
    for sample, n in zip(samples, counts, strict=True):
        h, w = (int(v) for v in sample["input_size"])
        k = sample["point_labels"].shape[1]
        gt_masks[start : start + n, :h, :w] = sample["masks"]
        coords[start : start + n, :k] = sample["point_coords"]
        labels[start : start + n, :k] = sample["point_labels"]
        has = sample["has_mask_input"]
        if has.any():
            mask_inputs[start : start + n][has] = sample["mask_inputs"]
        start += n

    def cat(key: str, dtype: torch.dtype) -> torch.Tensor:
        return (
            torch.cat([s[key].to(dtype) for s in samples]) if total else torch.zeros(0, dtype=dtype)
        )

    batch = {
        "images": [s["image"] for s in samples],
        "input_sizes": torch.stack([s["input_size"] for s in samples]).long(),
        "original_sizes": torch.stack([s["original_size"] for s in samples]).long(),
        "image_ids": [s["image_id"] for s in samples],
        "gt_masks": gt_masks,
        "object_image_index": torch.repeat_interleave(
            torch.arange(len(samples)), torch.tensor(counts, dtype=torch.long)
        ),
        "point_coords": coords,
        "point_labels": labels,
        "prompt_types": cat("prompt_types", torch.long),
        "mask_inputs": mask_inputs,
        "has_mask_input": cat("has_mask_input", torch.bool),
        "object_areas": cat("object_areas", torch.float32),
        "category_ids": cat("category_ids", torch.long),
    }
    if all("embedding" in s for s in samples):
        batch["embeddings"] = torch.stack([s["embedding"] for s in samples])
    return batch

"""Batch samples with different numbers of objects and prompt tokens into a `SamBatch`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from samft.data.batch import AutomaticPoints, SamBatch
from samft.model.prompts import LABEL_PAD, Prompts


def collate_samples(samples: Sequence[dict[str, Any]]) -> SamBatch:
    """Collate `SamDataset` samples (dicts, see `SamDataset.__getitem__`) into a `SamBatch`."""
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

    automatic = collate_automatic(samples, size)
    instance_labels, instance_targets = collate_instances(samples, size)
    embeddings = None
    if all("embedding" in s for s in samples):
        embeddings = stack_embeddings([s["embedding"] for s in samples])
    return SamBatch(
        images=[s["image"] for s in samples],
        input_sizes=torch.stack([s["input_size"] for s in samples]).long(),
        image_ids=[s["image_id"] for s in samples],
        gt_masks=gt_masks,
        object_image_index=torch.repeat_interleave(
            torch.arange(len(samples)), torch.tensor(counts, dtype=torch.long)
        ),
        prompts=Prompts(coords, labels, mask_inputs, cat("has_mask_input", torch.bool)),
        prompt_types=cat("prompt_types", torch.long),
        object_areas=cat("object_areas", torch.float32),
        embeddings=embeddings,
        automatic=automatic,
        instance_labels=instance_labels,
        instance_targets=instance_targets,
    )


def stack_embeddings(
    embeddings: Sequence[torch.Tensor | tuple[torch.Tensor, ...]],
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """B cached embeddings -> `B x ...`: one tensor each (SAM), or a tuple of levels each
    (SAM 2), stacked level by level."""
    if isinstance(embeddings[0], torch.Tensor):
        return torch.stack(list(embeddings))
    return tuple(torch.stack(list(level)) for level in zip(*embeddings, strict=True))


def collate_instances(
    samples: Sequence[dict[str, Any]], size: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The samples' instance id maps (B x S x S int32) and instance-head targets
    (B x 3 x S x S float32), zero-padded bottom/right to `size`; (None, None) when the
    samples carry none."""
    if not all("instance_targets" in s for s in samples):
        return None, None
    labels = torch.zeros((len(samples), size, size), dtype=torch.int32)
    targets = torch.zeros((len(samples), 3, size, size), dtype=torch.float32)
    for index, sample in enumerate(samples):
        h, w = sample["instance_labels"].shape
        labels[index, :h, :w] = sample["instance_labels"]
        targets[index, :, :h, :w] = sample["instance_targets"]
    return labels, targets


def collate_automatic(samples: Sequence[dict[str, Any]], size: int) -> AutomaticPoints | None:
    """The samples' automatic-mode points and instances, instance masks padded to
    `size` x `size`; None when the samples carry none."""
    if not all("automatic_points" in s for s in samples):
        return None
    points = [s["automatic_points"] for s in samples]
    instances = [s["instance_masks"] for s in samples]
    masks = torch.zeros((sum(len(m) for m in instances), size, size), dtype=torch.bool)
    start = 0
    for m in instances:
        masks[start : start + len(m), : m.shape[1], : m.shape[2]] = m
        start += len(m)

    def owners(parts: list[torch.Tensor]) -> torch.Tensor:
        counts = torch.tensor([len(p) for p in parts], dtype=torch.long)
        return torch.repeat_interleave(torch.arange(len(parts)), counts)

    return AutomaticPoints(
        points=torch.cat(points).float(),
        image_index=owners(points),
        instance_masks=masks,
        instance_image_index=owners(instances),
    )

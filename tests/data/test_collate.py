"""Collation: padded shapes, -1 padding labels, per-object image index, mask prompts."""

from __future__ import annotations

import torch

from samft.data.collate import collate_samples
from samft.model.prompts import PROMPT_BOX, PROMPT_ONE_POINT, PROMPT_POINTS


def _sample(image_id, h, w, n, tokens, types, mask_inputs=None, has=None):
    masks = torch.zeros((n, h, w), dtype=torch.bool)
    for i in range(n):
        masks[i, i : i + 3, :5] = True
    labels = torch.full((n, tokens), -1, dtype=torch.long)
    coords = torch.zeros((n, tokens, 2))
    return {
        "image_id": image_id,
        "image": torch.full((3, h, w), 7, dtype=torch.uint8),
        "input_size": torch.tensor([h, w]),
        "original_size": torch.tensor([2 * h, 2 * w]),
        "masks": masks,
        "point_coords": coords,
        "point_labels": labels,
        "prompt_types": torch.tensor(types),
        "mask_inputs": mask_inputs if mask_inputs is not None else torch.zeros((0, 1, 16, 16)),
        "has_mask_input": has if has is not None else torch.zeros(n, dtype=torch.bool),
        "object_areas": torch.arange(n, dtype=torch.float32) + 10,
        "category_ids": torch.full((n,), -1),
    }


def test_shapes_and_padding():
    a = _sample("a", 64, 48, 2, 3, [PROMPT_ONE_POINT, PROMPT_POINTS])
    a["point_labels"][0, 0] = 1  # one positive point
    a["point_labels"][1] = torch.tensor([1, 1, 0])  # two positives and a negative
    a["point_coords"][1] = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    prompt = torch.full((1, 1, 16, 16), 4.0)
    b = _sample("b", 40, 64, 1, 2, [PROMPT_BOX], prompt, torch.tensor([True]))
    b["point_labels"][0] = torch.tensor([2, 3])
    b["point_coords"][0] = torch.tensor([[5.0, 6.0], [30.0, 20.0]])

    batch = collate_samples([a, b])
    assert [img.shape for img in batch.images] == [(3, 64, 48), (3, 40, 64)]
    assert batch.input_sizes.tolist() == [[64, 48], [40, 64]]
    assert batch.image_ids == ["a", "b"]
    assert batch.gt_masks.shape == (3, 64, 64) and batch.gt_masks.dtype == torch.bool
    assert torch.equal(batch.gt_masks[0, :, :48], a["masks"][0])
    assert not batch.gt_masks[:2, :, 48:].any()  # right padding of image a
    assert torch.equal(batch.gt_masks[2, :40], b["masks"][0])
    assert not batch.gt_masks[2, 40:].any()  # bottom padding of image b
    assert batch.object_image_index.tolist() == [0, 0, 1]
    assert batch.prompts.coords.shape == (3, 3, 2)
    assert batch.prompts.labels.tolist() == [[1, -1, -1], [1, 1, 0], [2, 3, -1]]
    assert batch.prompts.coords[2, :2].tolist() == [[5.0, 6.0], [30.0, 20.0]]
    assert batch.prompt_types.tolist() == [PROMPT_ONE_POINT, PROMPT_POINTS, PROMPT_BOX]
    assert batch.prompts.mask_inputs.shape == (3, 1, 16, 16)
    assert (
        batch.prompts.mask_inputs[:2].abs().sum() == 0 and (batch.prompts.mask_inputs[2] == 4).all()
    )
    assert batch.prompts.has_mask_input.tolist() == [False, False, True]
    assert batch.object_areas.tolist() == [10.0, 11.0, 10.0]
    assert batch.prompts.labels.dtype == torch.long
    assert batch.prompts.coords.dtype == torch.float32


def test_mask_inputs_land_on_their_objects():
    prompts = torch.stack([torch.full((1, 16, 16), 1.0), torch.full((1, 16, 16), 3.0)])
    a = _sample("a", 64, 64, 4, 1, [0, 0, 0, 0], prompts, torch.tensor([False, True, False, True]))
    batch = collate_samples([_sample("z", 64, 32, 1, 1, [0]), a])
    assert batch.prompts.mask_inputs[:, 0, 0, 0].tolist() == [0.0, 0.0, 1.0, 0.0, 3.0]
    assert batch.prompts.has_mask_input.tolist() == [False, False, True, False, True]


def test_real_samples(coco_mini):
    from samft.data.dataset import SamDataset
    from samft.data.prompts import PromptSampler
    from samft.data.readers import CocoReader

    reader = CocoReader(coco_mini / "annotations_val.json", images=coco_mini / "images")
    sampler = PromptSampler(num_points=(1, 4), num_negatives=(0, 2), mask_prompt_prob=0.5)
    dataset = SamDataset(reader, image_size=64, prompts=sampler, deterministic=True)
    samples = [dataset[i] for i in range(4)]
    batch = collate_samples(samples)
    total = sum(len(s["prompt_types"]) for s in samples)
    tokens = max(s["point_labels"].shape[1] for s in samples)
    assert batch.gt_masks.shape == (total, 64, 64)
    assert batch.prompts.labels.shape == (total, tokens)
    assert batch.prompts.mask_inputs.shape == (total, 1, 16, 16)
    assert int(batch.prompts.has_mask_input.sum()) == sum(len(s["mask_inputs"]) for s in samples)
    # every object keeps at least one real token; padding only at the end of a row
    labels = batch.prompts.labels
    assert (labels[:, 0] != -1).all()
    padded = labels == -1
    assert (padded.int().diff(dim=1) >= 0).all()
    assert torch.equal(batch.gt_masks.flatten(1).sum(1) > 0, torch.ones(total, dtype=torch.bool))

"""Samples in the input frame, K objects, prompts on their masks, seeding per mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from samft.data.augment import build_augment
from samft.data.collate import collate_samples
from samft.data.dataset import SamDataset
from samft.data.errors import DataError
from samft.data.prompts import PromptSampler
from samft.data.readers import CocoReader
from samft.data.resize import resize_image, resize_masks
from samft.model.prompts import PROMPT_BOX


@pytest.fixture(scope="module")
def coco_val(coco_mini):
    return CocoReader(coco_mini / "annotations_val.json", images=coco_mini / "images")


def _same(a: dict, b: dict) -> bool:
    return all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


def test_val_sample_in_the_input_frame(coco_val):
    dataset = SamDataset(coco_val, image_size=256, max_objects_per_image=4, deterministic=True)
    for index in (0, 5):
        sample = dataset[index]
        record = dataset.record(index)
        loaded = coco_val.load(record, range(len(record.objects)))
        image = sample["image"]
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        assert max(image.shape[1:]) == 256
        np.testing.assert_array_equal(
            image.permute(1, 2, 0).numpy(), resize_image(loaded.image, 256)
        )
        assert sample["original_size"].tolist() == [record.height, record.width]
        assert sample["input_size"].tolist() == list(image.shape[1:])
        # the chosen objects are real objects of the image, resized like the image
        areas = sample["object_areas"].numpy()
        assert 1 <= len(areas) <= 4
        all_areas = [o.area for o in record.objects]
        chosen = [all_areas.index(a) for a in areas]
        np.testing.assert_array_equal(
            sample["masks"].numpy(), resize_masks(loaded.masks[chosen], 256)
        )
        # every point prompt lies on its mask, every box around it
        for mask, coords, labels, kind in zip(
            sample["masks"],
            sample["point_coords"],
            sample["point_labels"],
            sample["prompt_types"],
            strict=True,
        ):
            if kind == PROMPT_BOX:
                rows, cols = np.nonzero(mask.numpy())
                x0, y0, x1, y1 = coords[:2].reshape(-1).tolist()
                assert abs(x0 - cols.min()) <= 20 and abs(y1 - rows.max()) <= 20
            else:
                positives = coords[labels == 1].long()
                assert mask[positives[:, 1], positives[:, 0]].all()


def test_val_samples_are_the_same_every_time_and_seed_matters(coco_val):
    kwargs = {"image_size": 128, "max_objects_per_image": 3, "deterministic": True}
    sampler = PromptSampler(num_points=(1, 3), num_negatives=(0, 2))
    first = SamDataset(coco_val, prompts=sampler, seed=1, **kwargs)
    again = SamDataset(coco_val, prompts=sampler, seed=1, **kwargs)
    other = SamDataset(coco_val, prompts=sampler, seed=2, **kwargs)
    for index in range(0, len(first), 4):
        assert _same(first[index], first[index])
        assert _same(first[index], again[index])
    assert not all(_same(first[i], other[i]) for i in range(0, len(first), 4))


def test_val_batches_identical_across_workers(coco_val):
    dataset = SamDataset(coco_val, image_size=64, max_objects_per_image=2, deterministic=True)
    dataset.items = dataset.items[:6]

    def batches(workers):
        loader = DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=collate_samples)
        return [(b.prompts.coords, b.prompts.labels, b.gt_masks) for b in loader]

    for one, two in zip(batches(0), batches(2), strict=True):
        for a, b in zip(one, two, strict=True):
            assert torch.equal(a, b)


def test_train_samples_vary_and_follow_torch_seed(coco_val):
    augment = build_augment([{"name": "HorizontalFlip", "p": 0.5}])
    dataset = SamDataset(coco_val, image_size=128, max_objects_per_image=3, augment=augment)
    index = next(i for i in range(len(dataset)) if len(dataset.items[i][1]) > 6)
    torch.manual_seed(3)
    draws = [dataset[index] for _ in range(6)]
    assert not all(_same(draws[0], d) for d in draws[1:])
    assert all(len(d["prompt_types"]) == 3 for d in draws)  # K = 3 of > 6 objects
    torch.manual_seed(3)
    assert _same(draws[0], dataset[index])


def test_all_objects_when_k_is_none(coco_val):
    dataset = SamDataset(coco_val, image_size=64, max_objects_per_image=None, deterministic=True)
    counts = [len(dataset[i]["prompt_types"]) for i in range(len(dataset))]
    assert counts == [len(objects) for _, objects in dataset.items]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 100}, r"image_size = 100; expected a positive multiple of 16"),
        ({"max_objects_per_image": 0}, r"max_objects_per_image = 0"),
        ({"max_area_fraction": 1.5}, r"max_area_fraction = 1.5"),
    ],
)
def test_bad_settings(coco_val, kwargs, message):
    with pytest.raises(DataError, match=message):
        SamDataset(coco_val, **kwargs)


def test_automatic_points_come_with_every_instance_and_leave_the_prompts_alone(coco_val):
    plain = SamDataset(coco_val, image_size=256, max_objects_per_image=2, deterministic=True)
    auto = SamDataset(
        coco_val, image_size=256, max_objects_per_image=2, deterministic=True, automatic_points=5
    )
    index = next(i for i in range(len(plain)) if len(plain.record(i).objects) > 2)
    a, b = plain[index], auto[index]
    assert _same(a, {k: b[k] for k in a})  # the prompted part is unchanged
    record = auto.record(index)
    h, w = b["input_size"].tolist()
    points = b["automatic_points"]
    assert points.shape == (5, 2)
    assert (points >= 0).all() and (points[:, 0] <= w - 1).all() and (points[:, 1] <= h - 1).all()
    instances = [i for i, o in enumerate(record.objects) if not o.iscrowd and o.area > 0]
    expected = resize_masks(coco_val.load(record, instances).masks, 256)
    expected = expected[expected.any(axis=(1, 2))]
    np.testing.assert_array_equal(b["instance_masks"].numpy(), expected)
    batch = collate_samples([b, auto[(index + 1) % len(auto)]])
    assert batch.automatic.points.shape == (10, 2)
    assert batch.automatic.image_index.tolist() == [0] * 5 + [1] * 5
    assert batch.automatic.instance_masks.shape[1:] == (256, 256)
    assert batch.automatic.instance_image_index.tolist().count(0) == len(expected)
    assert collate_samples([a]).automatic is None
    with pytest.raises(DataError, match="automatic_points"):
        SamDataset(coco_val, automatic_points=-1)

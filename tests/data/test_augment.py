"""Augmentation from plain specs, applied to the image and every mask together."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from samft.data.augment import apply_augment, build_augment
from samft.data.dataset import AUG_DROPPED, SamDataset
from samft.data.errors import DataError
from samft.data.readers import FolderReader


def test_build_from_specs_with_composites():
    pipeline = build_augment(
        [
            {"name": "HorizontalFlip", "p": 0.5},
            {"name": "OneOf", "p": 1.0, "transforms": [{"name": "Blur"}, {"name": "RandomGamma"}]},
            {"name": "RandomResizedCrop", "size": [64, 48], "scale": [0.5, 1.0]},
        ]
    )
    assert isinstance(pipeline, A.Compose)
    assert [type(t).__name__ for t in pipeline.transforms] == [
        "HorizontalFlip",
        "OneOf",
        "RandomResizedCrop",
    ]
    assert pipeline.transforms[2].size == (64, 48)
    ready = A.Compose([A.VerticalFlip()])
    assert build_augment(ready) is ready
    assert build_augment(None) is None and build_augment([]) is None


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([{"name": "Normalize"}], r"train_augment\[0\]: Normalize is not allowed"),
        ([{"name": "HorizontalFlp"}], r"train_augment\[0\]\.name = 'HorizontalFlp' is not"),
        ([{"name": "HorizontalFlip", "prob": 0.5}], r"cannot build HorizontalFlip .*prob"),
        ([{"p": 0.5}], r"train_augment\[0\]: expected a mapping with a 'name' key"),
        ([{"name": "OneOf"}], r"OneOf needs a 'transforms' list"),
        ({"name": "HorizontalFlip"}, r"expected a list of transform specs"),
    ],
)
def test_bad_specs(specs, message):
    with pytest.raises(DataError, match=message):
        build_augment(specs)


def test_flip_moves_image_and_masks_together(ct_images):
    ct = ct_images[3]
    pipeline = build_augment([{"name": "HorizontalFlip", "p": 1.0}])
    image, masks = apply_augment(pipeline, ct.image, ct.masks, np.random.default_rng(0))
    np.testing.assert_array_equal(image, ct.image[:, ::-1])
    np.testing.assert_array_equal(masks, ct.masks[:, :, ::-1])
    assert masks.dtype == bool


def test_same_seed_same_augmentation_and_different_seeds_differ(ct_images):
    ct = ct_images[0]
    pipeline = build_augment([{"name": "Affine", "rotate": [-30, 30], "scale": [0.7, 1.3]}])
    first = apply_augment(pipeline, ct.image, ct.masks, np.random.default_rng(5))
    again = apply_augment(pipeline, ct.image, ct.masks, np.random.default_rng(5))
    other = apply_augment(pipeline, ct.image, ct.masks, np.random.default_rng(6))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


def test_objects_that_a_crop_removes_or_shrinks_are_dropped(ct_organs, ct_images):
    """A fixed crop of the top-left quarter of s0114_111: only the objects keeping at least
    min_area pixels inside it survive, in their original order."""
    reader = FolderReader(ct_organs / "images", ct_organs / "masks", mask_type="per_object")
    crop = {"name": "Crop", "x_min": 0, "y_min": 0, "x_max": 129, "y_max": 90}
    min_area = 40
    dataset = SamDataset(
        reader,
        image_size=128,
        augment=build_augment([crop]),
        max_objects_per_image=None,
        min_area=min_area,
    )
    index = [r.image_id for r in (dataset.record(i) for i in range(len(dataset)))].index(
        "s0114_111"
    )
    ct = ct_images[3]
    inside = ct.masks[:, :90, :129].sum(axis=(1, 2))
    expected = inside[(inside >= min_area) & (ct.masks.sum(axis=(1, 2)) >= min_area)]
    assert 0 < len(expected) < len(ct.masks)  # the crop really removes some objects
    sample = dataset[index]
    np.testing.assert_array_equal(sample["object_areas"].numpy(), expected)
    assert tuple(sample["original_size"].tolist()) == (90, 129)
    assert dataset.runtime[AUG_DROPPED] == len(ct.masks) - len(expected)


def test_fallback_to_the_plain_image_when_every_object_vanishes(ct_organs):
    reader = FolderReader(ct_organs / "images", ct_organs / "masks", mask_type="per_object")
    corner = {"name": "Crop", "x_min": 0, "y_min": 0, "x_max": 8, "y_max": 8}  # all background
    dataset = SamDataset(reader, image_size=64, augment=build_augment([corner]), min_area=1)
    sample = dataset[0]
    assert tuple(sample["original_size"].tolist()) == (512, 512)
    assert dataset.runtime["augmentation_fallbacks"] == 1

"""Dataset statistics, the sample grid, and the report written for `samft data`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from samft.data.datamodule import SamDataModule
from samft.data.dataset import SamDataset
from samft.data.prompts import PromptSampler
from samft.data.readers import CocoReader, FolderReader
from samft.data.report import write_data_report
from samft.data.stats import dataset_statistics
from samft.data.visualize import POSITIVE_COLOUR, draw_sample, render_sample_grid


def test_statistics_of_ct_organs(ct_organs, ct_images):
    reader = FolderReader(ct_organs / "images", ct_organs / "masks", mask_type="per_object")
    stats = dataset_statistics(SamDataset(reader, image_size=64, max_objects_per_image=8))
    areas = np.concatenate([ct.masks.sum(axis=(1, 2)) for ct in ct_images])
    assert stats["images"] == 5 and stats["images_used"] == 4
    assert stats["objects"] == stats["objects_used"] == 30
    assert stats["objects_per_image"] == {"min": 3.0, "max": 15.0, "mean": 7.5, "median": 6.0}
    assert stats["objects_per_sample"]["max"] == 8.0
    assert stats["object_area"]["median"] == float(np.median(areas))
    assert stats["object_area"]["min"] == float(areas.min())
    assert sum(stats["object_sizes"].values()) == 30
    assert stats["object_sizes"]["small"] == int((areas < 32**2).sum())
    assert stats["skipped"]["image_without_objects"] == 1
    assert stats["image_width"]["max"] == 512.0
    json.dumps(stats)  # JSON-ready


def test_statistics_count_crowds_and_small_objects(coco_mini):
    raw = json.loads((coco_mini / "annotations_val.json").read_text())
    reader = CocoReader(coco_mini / "annotations_val.json", images=coco_mini / "images")
    stats = dataset_statistics(SamDataset(reader, image_size=64, min_area=100))
    crowd = sum(a["iscrowd"] for a in raw["annotations"])
    small = sum(a["area"] < 100 and not a["iscrowd"] for a in raw["annotations"])
    assert stats["skipped"]["crowd"] == crowd == 2
    assert stats["skipped"]["below_min_area"] == small
    assert stats["objects_used"] == len(raw["annotations"]) - crowd - small
    used = [a for a in raw["annotations"] if a["area"] >= 100 and not a["iscrowd"]]
    assert stats["categories"] == len({a["category_id"] for a in used})


def test_drawn_points_are_where_the_prompts_are(ct_organs):
    reader = FolderReader(ct_organs / "images", ct_organs / "masks", mask_type="per_object")
    points = PromptSampler(point_prob=1, box_prob=0)
    dataset = SamDataset(reader, image_size=256, prompts=points, deterministic=True)
    sample = dataset[0]
    tile = draw_sample(sample, tile=256)  # the 512 px slice: scale 1
    assert tile.shape == (256, 256, 3)
    for x, y in sample["point_coords"][:, 0].long().tolist():
        np.testing.assert_array_equal(tile[y, x], POSITIVE_COLOUR)
    # masks are tinted: some pixels on the mask differ from the plain image
    image = sample["image"].permute(1, 2, 0).numpy()
    on = sample["masks"][0].numpy()
    assert np.abs(tile[on].astype(int) - image[on]).mean() > 10


def test_grid_layout(ct_organs):
    reader = FolderReader(ct_organs / "images", ct_organs / "masks", mask_type="per_object")
    dataset = SamDataset(reader, image_size=64, deterministic=True)
    grid = render_sample_grid(dataset, num_samples=3, columns=2, tile=100)
    assert grid.shape == (204, 204, 3) and grid.dtype == np.uint8
    with pytest.raises(ValueError, match="no samples"):
        render_sample_grid(dataset, indices=[])


def test_write_data_report(coco_mini, tmp_path):
    spec = {"format": "coco", "images": str(coco_mini / "images")}
    dm = SamDataModule(
        train={**spec, "annotations": str(coco_mini / "annotations_train.json")},
        val={**spec, "annotations": str(coco_mini / "annotations_val.json")},
        image_size=128,
        train_augment=[{"name": "RandomResizedCrop", "size": [96, 96], "scale": [0.1, 0.3]}],
    )
    report = write_data_report(dm, tmp_path / "report", num_samples=4, tile=64)
    written = json.loads((tmp_path / "report" / "data_stats.json").read_text())
    assert set(written) == {"train", "val"} == set(report["splits"])
    assert written["train"]["images"] == 26 and written["val"]["images"] == 27
    assert written["train"]["skipped"]["image_without_objects"] == 1
    augmentation = written["train"]["augmentation"]
    assert augmentation["samples_drawn"] == 4
    assert augmentation["objects_dropped_by_augmentation"] > 0  # small crops lose objects
    assert written["val"]["augmentation"]["objects_dropped_by_augmentation"] == 0
    picture = Image.open(tmp_path / "report" / "train_samples.png")
    assert picture.size == (4 * 64 + 3 * 4, 64)
    assert sorted(p.rsplit("/", 1)[-1] for p in report["files"]) == [
        "data_stats.json",
        "train_samples.png",
        "val_samples.png",
    ]

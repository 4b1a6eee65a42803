"""The demo's shapes dataset: deterministic, valid COCO, idempotent and written atomically."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from samft.data import synthetic
from samft.data.synthetic import CATEGORIES, MARKER, write_shapes_dataset

# pycocotools' own decode trips a numpy 2 deprecation warning; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SMALL = {"num_train": 6, "num_val": 3, "image_size": 96, "max_shapes": 4, "seed": 7}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes") / "data", **SMALL)


def test_layout_and_coco_loads(dataset):
    assert sorted(dataset) == ["images", "root", "train", "val"]
    for split, count in (("train", 6), ("val", 3)):
        coco = COCO(str(dataset[split]))
        assert len(coco.getImgIds()) == count
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORIES)
        for info in coco.loadImgs(coco.getImgIds()):
            image = Image.open(dataset["images"] / info["file_name"])
            assert image.size == (info["width"], info["height"]) == (96, 96)
            assert image.mode == "RGB"
    train_ids = set(COCO(str(dataset["train"])).getImgIds())
    val_ids = set(COCO(str(dataset["val"])).getImgIds())
    assert not train_ids & val_ids


def test_masks_match_declared_area_and_bbox_and_do_not_overlap(dataset):
    coco = json.loads(dataset["train"].read_text())
    assert coco["annotations"], "expected some objects"
    per_image: dict[int, np.ndarray] = {}
    for ann in coco["annotations"]:
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        assert mask.sum() == ann["area"] >= synthetic.MIN_VISIBLE_AREA
        assert float(mask_utils.area(ann["segmentation"])) == ann["area"]
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
        assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= len(CATEGORIES)
        # occlusion: what a later shape covers is no longer part of an earlier one
        seen = per_image.setdefault(ann["image_id"], np.zeros_like(mask))
        assert not (seen & mask).any()
        seen |= mask
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])


def test_images_are_not_flat_backgrounds(dataset):
    image = np.asarray(Image.open(dataset["images"] / "train_0000.png")).astype(float)
    assert image.std() > 20  # textured and noisy
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 1000


def test_deterministic_across_runs(dataset, tmp_path):
    again = write_shapes_dataset(tmp_path / "again", **SMALL)
    for key in ("train", "val"):
        assert again[key].read_bytes() == dataset[key].read_bytes()
    for path in sorted(dataset["images"].iterdir()):
        assert (again["images"] / path.name).read_bytes() == path.read_bytes()
    other = write_shapes_dataset(tmp_path / "other", **{**SMALL, "seed": 8})
    assert other["train"].read_bytes() != dataset["train"].read_bytes()


def test_idempotent_and_regenerates_when_needed(tmp_path, monkeypatch, caplog):
    root = tmp_path / "data"
    params = {**SMALL, "num_train": 2, "num_val": 1, "image_size": 48}
    with caplog.at_level("INFO", logger="samft.data.synthetic"):
        paths = write_shapes_dataset(root, **params)
    assert f"in {root}" in caplog.text
    assert sorted(p.name for p in root.parent.iterdir()) == ["data"]  # no staging left over

    calls = []
    original = synthetic._write_split
    monkeypatch.setattr(
        synthetic, "_write_split", lambda *a, **k: calls.append(a[1]) or original(*a, **k)
    )
    assert write_shapes_dataset(root, **params) == paths
    assert calls == []  # complete with the same parameters: nothing rewritten

    (paths["images"] / "val_0000.png").unlink()  # a missing file
    write_shapes_dataset(root, **params)
    assert calls == ["train", "val"] and (paths["images"] / "val_0000.png").is_file()

    calls.clear()
    write_shapes_dataset(root, **{**params, "num_val": 2})  # other parameters
    assert calls == ["train", "val"]
    assert json.loads((root / MARKER).read_text())["num_val"] == 2
    assert len(json.loads(paths["val"].read_text())["images"]) == 2
    assert sorted(p.name for p in root.parent.iterdir()) == ["data"]


def test_interrupted_run_leaves_the_old_dataset(tmp_path, monkeypatch):
    root = tmp_path / "data"
    params = {**SMALL, "num_train": 1, "num_val": 1, "image_size": 32}
    write_shapes_dataset(root, **params)
    before = {p.name: p.read_bytes() for p in root.rglob("*") if p.is_file()}

    def crash(directory, split, *args):
        if split == "val":
            raise KeyboardInterrupt
        return original(directory, split, *args)

    original = synthetic._write_split
    monkeypatch.setattr(synthetic, "_write_split", crash)
    with pytest.raises(KeyboardInterrupt):
        write_shapes_dataset(root, **{**params, "seed": 1})
    assert {p.name: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]

    with pytest.raises(KeyboardInterrupt):
        write_shapes_dataset(tmp_path / "fresh", **params)
    assert not (tmp_path / "fresh").exists()


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a samft shapes dataset"):
        write_shapes_dataset(root, num_train=1, num_val=1, image_size=32)
    assert (root / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="image_size=4"):
        write_shapes_dataset(tmp_path / "x", image_size=4)


def test_default_parameters_give_objects_of_every_size(tmp_path):
    """The demo's default dataset: 64 + 16 images of 256 px, small to large objects."""
    paths = write_shapes_dataset(tmp_path / "demo")
    coco = json.loads(paths["train"].read_text())
    assert len(coco["images"]) == 64
    areas = np.array([a["area"] for a in coco["annotations"]])
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any()
    assert (areas >= 96**2).any()
    counts = np.bincount([a["category_id"] for a in coco["annotations"]], minlength=5)[1:]
    assert (counts > 5).all()

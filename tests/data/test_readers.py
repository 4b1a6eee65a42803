"""Each reader on real data: COCO (RLE, polygons, crowd), SA-1B JSON, and the folder layouts."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from samft.data.readers import CocoReader, FolderReader, build_reader

# pycocotools' annToMask (the reference here) trips numpy 2's `copy` deprecation
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _by_id(reader):
    return {record.image_id: record for record in reader.records}


def test_coco_mini_rle_and_crowd(coco_mini):
    reader = CocoReader(coco_mini / "annotations_train.json", images=coco_mini / "images")
    raw = json.loads((coco_mini / "annotations_train.json").read_text())
    assert len(reader) == 26
    assert sum(len(r.objects) for r in reader.records) == 181
    crowd = [o for r in reader.records for o in r.objects if o.iscrowd]
    assert len(crowd) == 1  # README: one crowd annotation in train
    empty = _by_id(reader)["508"]  # README: image 508 has no thing instances
    assert empty.objects == []

    # pixels and masks agree with pycocotools' own COCO API
    coco = COCO(str(coco_mini / "annotations_train.json"))
    loaded = reader[0]
    record = loaded.record
    assert loaded.image.dtype == np.uint8 and loaded.image.shape == (record.height, record.width, 3)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[int(record.image_id)]))
    assert len(anns) == len(loaded.masks)
    for ann, mask, obj in zip(anns, loaded.masks, record.objects, strict=True):
        np.testing.assert_array_equal(mask, coco.annToMask(ann).astype(bool))
        assert obj.area == ann["area"] == mask.sum()
        assert obj.category_id == ann["category_id"]
    assert {c["id"] for c in raw["categories"]} == set(reader.categories)


def test_coco_split_field_selects_the_same_images(coco_mini):
    whole = CocoReader(coco_mini / "annotations.json", images=coco_mini / "images", split="val")
    alone = CocoReader(coco_mini / "annotations_val.json", images=coco_mini / "images")
    assert [r.image_id for r in whole.records] == [r.image_id for r in alone.records]
    assert [[o.area for o in r.objects] for r in whole.records] == [
        [o.area for o in r.objects] for r in alone.records
    ]


def test_coco_grayscale_photo_is_rgb(coco_mini):
    reader = CocoReader(coco_mini / "annotations.json", images=coco_mini / "images")
    from PIL import Image

    gray = [r for r in reader.records if Image.open(r.path).mode == "L"]
    assert len(gray) == 1  # the one grayscale JPEG of coco-mini
    image = reader.load_image(gray[0])
    assert image.shape == (gray[0].height, gray[0].width, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_coco_polygons_and_uncompressed_crowd_rle(polygon_coco, ct_organs, ct_images):
    reader = CocoReader(polygon_coco, images=ct_organs)
    coco = COCO(str(polygon_coco))
    for record in reader.records:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[int(record.image_id)]))
        masks = reader.load_masks(record, range(len(record.objects)))
        for ann, mask, obj in zip(anns, masks, record.objects, strict=True):
            np.testing.assert_array_equal(mask, coco.annToMask(ann).astype(bool))
            assert obj.area == mask.sum()
            assert obj.iscrowd == bool(ann["iscrowd"])
    # the crowd RLE decodes to exactly the mask it was written from
    first = reader.records[0]
    crowd = [i for i, o in enumerate(first.objects) if o.iscrowd]
    assert len(crowd) == 1
    np.testing.assert_array_equal(reader.load_masks(first, crowd)[0], ct_images[0].masks[0])
    # polygons traced along pixel centres cover most of each real mask
    masks = reader.load_masks(first, [0])
    inter = (masks[0] & ct_images[0].masks[0]).sum()
    assert inter / ct_images[0].masks[0].sum() > 0.8


def test_coco_ct_annotations_match_the_pngs(ct_organs, ct_images):
    reader = build_reader({"format": "coco", "annotations": str(ct_organs / "annotations.json")})
    for record, ct in zip(reader.records, ct_images, strict=True):
        assert record.path.name == ct.path.name
        masks = reader.load_masks(record, range(len(record.objects)))
        # annotations.json lists the masks in file order
        np.testing.assert_array_equal(masks, ct.masks)


def test_sa1b_reads_back_what_was_written(sa1b_dir, ct_images):
    reader = build_reader({"format": "sa1b", "root": str(sa1b_dir)})
    assert [r.path.stem for r in reader.records] == [ct.stem for ct in ct_images]
    for loaded, ct in zip(reader, ct_images, strict=True):
        np.testing.assert_array_equal(loaded.image, ct.image)
        np.testing.assert_array_equal(loaded.masks, ct.masks)
        assert [o.area for o in loaded.record.objects] == ct.masks.sum(axis=(1, 2)).tolist()


def test_folder_per_object_pngs_real_layout(ct_organs, ct_images):
    reader = FolderReader(ct_organs / "images", ct_organs / "masks", mask_type="per_object")
    assert [len(r.objects) for r in reader.records] == [len(ct.masks) for ct in ct_images]
    assert [len(r.objects) for r in reader.records] == [3, 4, 0, 15, 8]
    for loaded, ct in zip(reader, ct_images, strict=True):
        np.testing.assert_array_equal(loaded.masks, ct.masks)
        assert [o.key.name for o in loaded.record.objects] == ct.names


def test_folder_per_object_subfolders(ct_organs, ct_images, tmp_path):
    from PIL import Image

    for ct in ct_images[:2]:
        (tmp_path / ct.stem).mkdir()
        for name, mask in zip(ct.names, ct.masks, strict=True):
            Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / ct.stem / name)
    reader = FolderReader(ct_organs / "images", tmp_path, mask_type="per_object")
    counts = {r.image_id: len(r.objects) for r in reader.records}
    assert counts == {ct.stem: len(ct.masks) if ct in ct_images[:2] else 0 for ct in ct_images}
    np.testing.assert_array_equal(reader[1].masks, ct_images[1].masks)


def test_folder_instance_id_pngs_16_bit(ct_organs, ct_images, instance_dir):
    reader = FolderReader(
        ct_organs / "images", instance_dir, mask_type="instance", mask_suffix="_ids"
    )
    for loaded, ct in zip(reader, ct_images, strict=True):
        np.testing.assert_array_equal(loaded.masks, ct.masks)
        assert [o.key for o in loaded.record.objects] == [1000 + i for i in range(len(ct.masks))]


def _class_union(ct, ct_classes, value):
    """Union of the CT masks whose organ has class `value`."""
    masks = [m for lab, m in zip(ct.labels, ct.masks, strict=True) if ct_classes[lab] == value]
    return np.any(masks, axis=0)


def test_folder_semantic_classes_and_components(ct_organs, ct_images, ct_classes, semantic_dir):
    images = ct_organs / "images"
    classes = FolderReader(images, semantic_dir, mask_type="semantic", semantic_objects="classes")
    regions = FolderReader(images, semantic_dir, mask_type="semantic")
    for ct, by_class, by_region in zip(ct_images, classes.records, regions.records, strict=True):
        present = sorted({ct_classes[label] for label in ct.labels})
        # "classes": one object per class present, its mask the union of that organ's masks
        assert [o.category_id for o in by_class.objects] == present
        masks = classes.load_masks(by_class, range(len(by_class.objects)))
        for value, mask in zip(present, masks, strict=True):
            np.testing.assert_array_equal(mask, _class_union(ct, ct_classes, value))
        # "components": one object per 8-connected region of each class
        unions = [_class_union(ct, ct_classes, v).astype(np.uint8) for v in present]
        expected = sum(cv2.connectedComponents(u, connectivity=8)[0] - 1 for u in unions)
        assert len(by_region.objects) == expected
        masks = regions.load_masks(by_region, range(len(by_region.objects)))
        assert [int(m.sum()) for m in masks] == [o.area for o in by_region.objects]
        assert int(masks.sum()) == int(ct.masks.sum())
        if len(masks):
            assert masks.sum(axis=0).max() == 1  # regions never overlap


def test_hip_masks_split_into_regions(ct_organs, ct_classes, semantic_dir):
    """s0619_32 has hip_left_000 and hip_left_001: one class object, two region objects."""
    classes = FolderReader(
        ct_organs / "images", semantic_dir, mask_type="semantic", semantic_objects="classes"
    )
    components = FolderReader(ct_organs / "images", semantic_dir, mask_type="semantic")
    hip = ct_classes["hip_left"]
    pelvis = {r.image_id: r for r in classes.records}["s0619_32"]
    regions = {r.image_id: r for r in components.records}["s0619_32"]
    assert sum(o.category_id == hip for o in pelvis.objects) == 1
    assert sum(o.category_id == hip for o in regions.objects) == 2

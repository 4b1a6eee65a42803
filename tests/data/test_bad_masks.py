"""Folder datasets: masks saved the usual wrong ways are read as meant or refused by name,
never silently turned into images without objects."""

from __future__ import annotations

import re
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from samft.data.errors import DataError
from samft.data.images import read_label_map
from samft.data.readers import FolderReader


def _binary_maps(ct_images, root):
    """One 0/255 PNG per CT slice: the union of its organs, as binary masks are often saved."""
    root.mkdir()
    for ct in ct_images:
        union = ct.masks.any(axis=0) if len(ct.masks) else np.zeros(ct.image.shape[:2], bool)
        Image.fromarray(union.astype(np.uint8) * 255).save(root / f"{ct.stem}.png")
    return root


# ---- 0/255 binary maps


def test_binary_0_255_instance_maps_are_one_object_each(ct_organs, ct_images, tmp_path):
    maps = _binary_maps(ct_images, tmp_path / "maps")
    reader = FolderReader(ct_organs / "images", maps, mask_type="instance")
    assert reader.binary_maps == 4  # amos_0507_31 has no organ: an all-zero map
    for ct, record in zip(ct_images, reader.records, strict=True):
        union = ct.masks.any(axis=0) if len(ct.masks) else None
        if union is None:
            assert record.objects == []
            continue
        assert [o.area for o in record.objects] == [int(union.sum())]
        np.testing.assert_array_equal(reader.load_masks(record, [0])[0], union)


def test_binary_0_255_semantic_maps_split_into_regions(ct_organs, ct_images, tmp_path):
    maps = _binary_maps(ct_images, tmp_path / "maps")
    reader = FolderReader(ct_organs / "images", maps, mask_type="semantic")
    for ct, record in zip(ct_images, reader.records, strict=True):
        union = ct.masks.any(axis=0).astype(np.uint8) if len(ct.masks) else None
        regions = 0 if union is None else cv2.connectedComponents(union, connectivity=8)[0] - 1
        assert len(record.objects) == regions
        assert all(o.category_id == 255 for o in record.objects)


def test_255_stays_void_where_a_map_uses_it_beside_ids(ct_organs, ct_images, tmp_path):
    """VOC-style maps: 255 marks void borders next to ids 1..n; then a map holding only 0
    and 255 is all void, not one object."""
    maps = tmp_path / "maps"
    _binary_maps(ct_images, maps)
    first = ct_images[0]
    ids = np.zeros(first.image.shape[:2], dtype=np.uint8)
    for i, mask in enumerate(first.masks, start=1):
        ids[mask] = i
    ids[:3] = 255  # a void band
    Image.fromarray(ids).save(maps / f"{first.stem}.png")
    reader = FolderReader(ct_organs / "images", maps, mask_type="instance")
    assert reader.binary_maps == 0
    assert [o.key for o in reader.records[0].objects] == list(range(1, len(first.masks) + 1))
    assert all(record.objects == [] for record in reader.records[1:])


# ---- JPEG masks are refused by name, TIFF masks are read


def test_per_object_jpeg_mask_is_refused_not_skipped(ct_organs, tmp_path):
    masks = tmp_path / "masks"
    shutil.copytree(ct_organs / "masks", masks)
    # amos_0507_31 has no mask; its only mask saved as JPEG used to leave it "without objects"
    Image.new("L", (320, 290), 255).save(masks / "amos_0507_31_body_000.jpg")
    with pytest.raises(DataError, match=r"amos_0507_31_body_000\.jpg is JPEG: lossy compression"):
        FolderReader(ct_organs / "images", masks, mask_type="per_object")


def test_instance_jpeg_map_is_refused_by_name(ct_organs, instance_dir, tmp_path):
    maps = tmp_path / "maps"
    shutil.copytree(instance_dir, maps)
    (maps / "s0114_111_ids.png").unlink()
    Image.new("L", (258, 181)).save(maps / "s0114_111_ids.jpeg")
    with pytest.raises(DataError, match=r"s0114_111_ids\.jpeg is JPEG: .* save masks as PNG"):
        FolderReader(ct_organs / "images", maps, mask_suffix="_ids")


def test_jpeg_content_behind_a_png_name_is_refused(tmp_path):
    Image.new("L", (8, 8), 3).save(tmp_path / "mask.png", format="JPEG")
    with pytest.raises(DataError, match=r"mask\.png is a JPEG: lossy compression"):
        read_label_map(tmp_path / "mask.png")


@pytest.fixture
def dsb_tiff(shared_data, tmp_path):
    """Three dsb-nuclei val images with their 16-bit instance maps as PNG and as TIFF."""
    split = shared_data / "dsb-nuclei" / "val"
    images, png, tif = tmp_path / "images", tmp_path / "png", tmp_path / "tif"
    for folder in (images, png, tif):
        folder.mkdir()
    for path in sorted((split / "images").glob("*.png"))[:3]:
        shutil.copy(path, images)
        shutil.copy(split / "masks" / path.name, png)
        ids = np.asarray(Image.open(split / "masks" / path.name))
        Image.fromarray(ids).save(tif / f"{path.stem}.tif")
    return images, png, tif


def test_tiff_instance_maps_read_like_png(dsb_tiff):
    images, png, tif = dsb_tiff
    assert Image.open(next(tif.iterdir())).mode == "I;16"
    from_png, from_tif = FolderReader(images, png), FolderReader(images, tif)
    assert sum(len(r.objects) for r in from_tif.records) > 20
    for a, b in zip(from_png.records, from_tif.records, strict=True):
        assert [(o.key, o.area) for o in a.objects] == [(o.key, o.area) for o in b.objects]
        indices = range(len(a.objects))
        np.testing.assert_array_equal(
            from_png.load_masks(a, indices), from_tif.load_masks(b, indices)
        )


def test_tiff_per_object_masks(ct_organs, ct_images, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for path in (ct_organs / "masks").glob("*.png"):
        Image.open(path).save(masks / f"{path.stem}.tiff")
    reader = FolderReader(ct_organs / "images", masks, mask_type="per_object")
    for ct, record in zip(ct_images, reader.records, strict=True):
        assert [o.area for o in record.objects] == [int(m.sum()) for m in ct.masks]


def test_two_maps_for_one_image(dsb_tiff):
    images, png, tif = dsb_tiff
    shutil.copy(next(tif.iterdir()), png)
    with pytest.raises(DataError, match=r"has several mask files in .*\.png, .*\.tif; keep one"):
        FolderReader(images, png)


# ---- a missing label map names the layout that was found instead


def _subfolders(ct_organs, root):
    for path in (ct_organs / "masks").glob("*.png"):
        stem = next(
            p.stem for p in (ct_organs / "images").glob("*.png") if path.stem.startswith(p.stem)
        )
        (root / stem).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / stem / path.name)
    return root


@pytest.mark.parametrize(
    ("layout", "hint"),
    [
        (
            "per_object_files",
            r"Found 3 files amos_0004_75_\*.* set data.<split>.mask_type=per_object",
        ),
        ("per_object_folders", r"amos_0004_75/, a folder of 3 per-object masks: set data.<split>"),
        ("suffix", r"Found amos_0004_75_ids\.png: set data.<split>.mask_suffix='_ids'"),
        ("empty", r"No file in .* is named after 'amos_0004_75'"),
    ],
)
def test_missing_label_map_names_the_layout_found(ct_organs, instance_dir, tmp_path, layout, hint):
    masks = {
        "per_object_files": lambda: ct_organs / "masks",
        "per_object_folders": lambda: _subfolders(ct_organs, tmp_path / "masks"),
        "suffix": lambda: instance_dir,
        "empty": lambda: tmp_path,
    }[layout]()
    with pytest.raises(DataError, match=r"mask file not found for image .*amos_0004_75\.png") as e:
        FolderReader(ct_organs / "images", masks, mask_type="instance")
    message = str(e.value)
    assert re.search(hint, message), message
    assert "Layouts: mask_type=instance" in message and "per_object:" in message
    assert len(message.splitlines()) == 3


def test_per_object_mode_on_label_maps(ct_organs, semantic_dir):
    with pytest.raises(DataError, match=r"amos_0004_75\.png is named like its image.*instance"):
        FolderReader(ct_organs / "images", semantic_dir, mask_type="per_object")

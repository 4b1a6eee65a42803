"""Bad input gives a clear error naming the file; odd image modes are converted; empty
masks and images left without objects are skipped and counted."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from samft.data.dataset import SamDataset
from samft.data.errors import DataError
from samft.data.images import read_label_map, read_rgb
from samft.data.readers import CocoReader, FolderReader, Sa1bReader, build_reader


@pytest.fixture
def coco_copy(ct_organs, tmp_path):
    """A writable copy of ct-organs (images + COCO JSON) and its parsed annotations."""
    shutil.copytree(ct_organs / "images", tmp_path / "images")
    data = json.loads((ct_organs / "annotations.json").read_text())
    return tmp_path, data


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_missing_image_file(coco_copy):
    root, data = coco_copy
    data["images"][1]["file_name"] = "images/nowhere.png"
    path = _write(root / "ann.json", data)
    with pytest.raises(DataError, match=r"image file not found: .*nowhere\.png"):
        CocoReader(path)


def test_unreadable_image_file(coco_copy):
    root, data = coco_copy
    (root / "images" / "amos_0004_75.png").write_bytes(b"not a png at all")
    reader = CocoReader(_write(root / "ann.json", data))
    with pytest.raises(DataError, match=r"cannot read image file .*amos_0004_75\.png"):
        reader.load_image(reader.records[0])


def test_image_size_differs_from_annotation(coco_copy):
    root, data = coco_copy
    Image.new("RGB", (100, 80)).save(root / "images" / "s0619_32.png")
    reader = CocoReader(_write(root / "ann.json", data))
    record = reader.records[4]
    with pytest.raises(DataError, match=r"s0619_32\.png is 80x100 .* expect 155x225"):
        reader.load(record, [0])


def test_rle_size_differs_from_image(coco_copy):
    root, data = coco_copy
    data["annotations"][0]["segmentation"]["size"] = [10, 10]
    with pytest.raises(DataError, match=r"ann\.json: annotations\[0\] \(id 1\).*size \[10, 10\]"):
        CocoReader(_write(root / "ann.json", data))


def test_malformed_json(coco_copy, sa1b_dir, tmp_path):
    root, _ = coco_copy
    (root / "ann.json").write_text('{"images": [')
    with pytest.raises(DataError, match=r"malformed JSON in .*ann\.json"):
        CocoReader(root / "ann.json")
    broken = tmp_path / "sa1b"
    shutil.copytree(sa1b_dir, broken)
    (broken / "s0114_111.json").write_text("{oops")
    with pytest.raises(DataError, match=r"malformed JSON in .*s0114_111\.json"):
        Sa1bReader(broken)
    with pytest.raises(DataError, match=r"annotation file not found: .*missing\.json"):
        CocoReader(root / "missing.json")


def test_json_without_required_keys(coco_copy):
    root, data = coco_copy
    del data["images"][2]["height"]
    with pytest.raises(DataError, match=r"ann\.json: images\[2\] \(id 3\): missing key 'height'"):
        CocoReader(_write(root / "ann.json", data))


def test_annotation_of_an_image_that_does_not_exist(coco_copy):
    root, data = coco_copy
    data["annotations"][5]["image_id"] = 99
    with pytest.raises(DataError, match=r"annotations\[5\] \(id 6\) points at image_id 99"):
        CocoReader(_write(root / "ann.json", data))


def test_folder_mask_of_an_image_that_does_not_exist(ct_organs, tmp_path):
    shutil.copytree(ct_organs / "masks", tmp_path / "masks")
    shutil.copy(tmp_path / "masks" / "s0619_32_colon_000.png", tmp_path / "masks" / "ghost_x.png")
    with pytest.raises(DataError, match=r"mask file .*ghost_x\.png matches no image"):
        FolderReader(ct_organs / "images", tmp_path / "masks", mask_type="per_object")


def test_folder_missing_label_map(ct_organs, semantic_dir, tmp_path):
    shutil.copytree(semantic_dir, tmp_path / "maps")
    (tmp_path / "maps" / "amos_0006_90.png").unlink()
    with pytest.raises(DataError, match=r"mask file not found for image .*amos_0006_90\.png"):
        FolderReader(ct_organs / "images", tmp_path / "maps", mask_type="semantic")


def test_folder_mask_size_differs_from_image(ct_organs, tmp_path):
    shutil.copytree(ct_organs / "masks", tmp_path / "masks")
    Image.new("L", (30, 20)).save(tmp_path / "masks" / "s0114_111_aorta_000.png")
    with pytest.raises(DataError, match=r"s0114_111_aorta_000\.png is 20x30 .*181x258"):
        FolderReader(ct_organs / "images", tmp_path / "masks", mask_type="per_object")


def test_sa1b_missing_image(sa1b_dir, tmp_path):
    broken = tmp_path / "sa1b"
    shutil.copytree(sa1b_dir, broken)
    (broken / "amos_0006_90.png").unlink()
    with pytest.raises(DataError, match=r"amos_0006_90\.json: image file not found"):
        Sa1bReader(broken)


def test_bad_dataset_spec():
    with pytest.raises(DataError, match=r"data.train.format = 'voc'; expected one of"):
        build_reader({"format": "voc"}, "data.train")
    with pytest.raises(DataError, match=r"unknown key\(s\) \['annotation'\] for format 'coco'"):
        build_reader({"format": "coco", "annotation": "x.json"}, "data.train")


def test_grayscale_rgba_and_16_bit_images_become_rgb(tmp_path):
    gray = (np.arange(12, dtype=np.uint8).reshape(3, 4) * 20).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    out = read_rgb(tmp_path / "gray.png")
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))

    rgba = np.dstack(
        [np.full((2, 2), 10), np.full((2, 2), 20), np.full((2, 2), 30), [[0, 255]] * 2]
    )
    Image.fromarray(rgba.astype(np.uint8), "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgba.png"), rgba[..., :3])

    deep = np.array([[1000, 2000], [3000, 1000]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = read_rgb(tmp_path / "deep.png")
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    # min-max stretched: 1000 -> 0, 2000 -> 128 (127.5 rounded), 3000 -> 255
    np.testing.assert_array_equal(out[..., 0], [[0, 128], [255, 0]])

    palette = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), "P")
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "palette.png")[0, 1], [200, 100, 50])
    np.testing.assert_array_equal(read_label_map(tmp_path / "palette.png"), [[0, 1], [1, 0]])


def test_empty_masks_and_images_without_objects_are_counted(ct_organs, tmp_path):
    shutil.copytree(ct_organs / "masks", tmp_path / "masks")
    Image.new("L", (258, 181)).save(tmp_path / "masks" / "s0114_111_nothing_000.png")
    reader = FolderReader(ct_organs / "images", tmp_path / "masks", mask_type="per_object")
    dataset = SamDataset(reader, image_size=64, min_area=0)
    # amos_0507_31 has no mask at all; the all-zero PNG is an empty mask, not an object
    assert dataset.skipped == {"image_without_objects": 1, "empty_mask": 1}
    assert len(dataset) == 4
    assert sum(len(objs) for _, objs in dataset.items) == 30


class _BadAtTwo(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        if index == 2:
            raise DataError("image /data/b.png: annotation 7 has a NaN polygon")
        return torch.zeros(1)


def test_an_error_in_a_loader_worker_reads_as_the_worker_said_it():
    """`data.num_workers=2`: the worker's one sentence, not its traceback."""
    from samft.__main__ import describe_error

    loader = torch.utils.data.DataLoader(_BadAtTwo(), batch_size=1, num_workers=1)
    with pytest.raises(DataError) as caught:
        list(loader)
    assert "Original Traceback" in str(caught.value)  # what torch re-raises
    code, message = describe_error(caught.value, "train", [])
    assert (code, message) == (2, "DataError: image /data/b.png: annotation 7 has a NaN polygon")


@pytest.fixture
def pixel_limit():
    """Set the image pixel limit for one test; PIL's default afterwards."""
    from samft.data.images import allow_image_pixels

    yield allow_image_pixels
    allow_image_pixels(None)


def test_an_image_over_the_pixel_limit_names_file_size_and_key(tmp_path, pixel_limit):
    path = tmp_path / "scan.png"
    Image.fromarray(np.zeros((64, 80, 3), dtype=np.uint8)).save(path)
    pixel_limit(1000)
    with pytest.raises(DataError) as caught:
        read_rgb(path)
    assert str(caught.value) == (
        f"image file {path} has 5120 pixels, over the limit of 1000 pixels (a guard against "
        "decompression bombs); if the file is genuine, allow it with max_image_pixels=5120"
    )
    pixel_limit(5120)  # what the message says
    assert read_rgb(path).shape == (64, 80, 3)
    with pytest.raises(ValueError, match="max_image_pixels=-3: must be"):
        pixel_limit(-3)

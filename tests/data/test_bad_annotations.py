"""Bad COCO / SA-1B annotation JSON is a DataError naming the file and the entry, raised
while indexing: never a crash inside pycocotools, never a silent partial mask.

Tests whose bad value used to make pycocotools allocate tens of GB run under `memory_cap`,
so a regression fails the test instead of taking the machine down."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from samft.data.errors import DataError
from samft.data.readers import CocoReader, Sa1bReader

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def polygons(polygon_coco, ct_organs, tmp_path):
    """(data, read): the ct-organs polygon COCO JSON, and a function that writes it and
    indexes it with CocoReader."""
    data = json.loads(polygon_coco.read_text())

    def read(changed: dict) -> CocoReader:
        path = tmp_path / "poly.json"
        path.write_text(json.dumps(changed))
        return CocoReader(path, images=ct_organs)

    return data, read


@pytest.fixture
def rles(ct_organs, tmp_path):
    """(data, read) like `polygons`, for ct-organs' compressed-RLE COCO JSON."""
    data = json.loads((ct_organs / "annotations.json").read_text())

    def read(changed: dict) -> CocoReader:
        path = tmp_path / "rle.json"
        path.write_text(json.dumps(changed))
        return CocoReader(path, images=ct_organs)

    return data, read


def _runs(segmentation: dict) -> list[int]:
    """Uncompressed counts of a compressed RLE (column-major runs, zeros first)."""
    flat = mask_utils.decode(segmentation).flatten(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


# ---- 1. polygons, boxes and image sizes are checked before pycocotools sees them


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), -1e6, 1e9])
def test_polygon_coordinate_out_of_reason(polygons, bad, memory_cap):
    data, read = polygons
    data["annotations"][2]["segmentation"][0][3] = bad
    with pytest.raises(DataError, match=r"poly\.json: annotations\[2\] \(id 3\): polygon 0 ") as e:
        read(data)
    assert "fix or drop" in str(e.value)


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        ([[10, 10, 20, 10, 20, 20, 15]], "polygon 0 has 7 coordinates"),
        ([[10, 10, 20, 10, 20, 20], [10, 10, 20, 10]], "polygon 1 has 4 coordinates"),
        ([10, 10, 20, 10, 20, 20], r"polygon 0 is int.*flat list"),
        ([[10, 10, 20, "x", 20, 20]], r"polygon 0 coordinate 3 is 'x'"),
    ],
)
def test_polygon_of_wrong_shape(polygons, segmentation, message):
    data, read = polygons
    data["annotations"][0]["segmentation"] = segmentation
    with pytest.raises(DataError, match=rf"annotations\[0\] \(id 1\): {message}"):
        read(data)


def test_polygon_a_few_pixels_outside_is_clipped(polygons):
    """COCO has points just outside the image; pycocotools clips them, so they are fine."""
    data, read = polygons
    w = data["images"][0]["width"]
    data["annotations"][0]["segmentation"] = [[-3, -3, w + 3, -3, w + 3, 10, -3, 10]]
    record = read(data).records[0]
    assert record.objects[0].area == 10 * w  # rows 0..9, every column


def test_polygon_outline_too_long_for_memory(polygons, memory_cap):
    data, read = polygons
    w, h = data["images"][0]["width"], data["images"][0]["height"]
    zigzag = [v for i in range(3000) for v in ((0, 0, w, h) if i % 2 else (w, 0, 0, h))]
    data["annotations"][0]["segmentation"] = [zigzag]
    with pytest.raises(DataError, match=r"outline is \d+ px long \(limit \d+\)"):
        read(data)


@pytest.mark.parametrize(
    "bbox", [[1, 2, 3], [0, 0, -5, 5], [0, 0, float("nan"), 1], "abc", [0, 0, 1e9, 1], None]
)
def test_malformed_bbox(polygons, bbox):
    data, read = polygons
    data["annotations"][4]["bbox"] = bbox
    with pytest.raises(DataError, match=r"annotations\[4\] \(id 5\): bbox .* delete the key"):
        read(data)


@pytest.mark.parametrize(
    ("key", "value"),
    [("width", 0), ("height", -5), ("height", 10**9), ("width", "512"), ("width", 12.5)],
)
def test_bad_image_size(polygons, key, value, memory_cap):
    data, read = polygons
    data["images"][1][key] = value
    with pytest.raises(DataError, match=rf"images\[1\] \(id 2\): {key} is .*positive integer"):
        read(data)


# ---- 2. RLE counts must cover the image exactly and agree with `area`


def test_truncated_rle_that_still_decodes(rles):
    data, read = rles
    seg = data["annotations"][3]["segmentation"]
    h, w = seg["size"]
    short = mask_utils.frPyObjects({"size": [h, w], "counts": _runs(seg)[:-1]}, h, w)
    seg["counts"] = short["counts"].decode("ascii")
    with pytest.raises(DataError, match=r"rle\.json: annotations\[3\] \(id 4\): RLE counts cover"):
        read(data)


@pytest.mark.parametrize(
    "counts",
    ["c26>0U", "abc~", "a ", "9", "é0", ""],
    ids=["cut", "out_of_range", "space", "too_few_pixels", "non_ascii", "empty"],
)
def test_corrupt_rle_string(rles, counts):
    data, read = rles
    data["annotations"][0]["segmentation"]["counts"] = counts
    with pytest.raises(DataError, match=r"annotations\[0\] \(id 1\): RLE counts"):
        read(data)


@pytest.mark.parametrize("change", ["negative", "fraction", "short", "long"])
def test_bad_uncompressed_rle_counts(rles, change):
    data, read = rles
    seg = data["annotations"][1]["segmentation"]
    runs = _runs(seg)
    if change == "negative":
        runs[1], runs[2] = -runs[1], runs[2] + 2 * runs[1]
    elif change == "fraction":
        runs[1], runs[2] = runs[1] + 0.5, runs[2] - 0.5
    elif change == "short":
        runs[-1] -= 1
    else:
        runs.append(7)
    seg["counts"] = runs
    with pytest.raises(DataError, match=r"annotations\[1\] \(id 2\): RLE counts"):
        read(data)


def test_uncompressed_rle_reads_like_the_compressed_one(rles):
    data, read = rles
    expected = read(data).records[0].objects[1]
    data["annotations"][1]["segmentation"]["counts"] = _runs(data["annotations"][1]["segmentation"])
    assert read(data).records[0].objects[1].area == expected.area


def test_rle_area_disagrees_with_the_counts(rles):
    data, read = rles
    data["annotations"][5]["area"] += 50
    with pytest.raises(DataError, match=r"annotations\[5\] \(id 6\): 'area' is .* covers 20023"):
        read(data)


@pytest.mark.parametrize("size", ["512x512", [512], [512, "a"]])
def test_rle_size_not_a_pair(rles, size):
    data, read = rles
    data["annotations"][0]["segmentation"]["size"] = size
    with pytest.raises(DataError, match=r"annotations\[0\] \(id 1\): segmentation 'size' is"):
        read(data)


@pytest.mark.parametrize("change", ["truncate", "area"])
def test_sa1b_corrupt_rle(sa1b_dir, tmp_path, change):
    root = tmp_path / "sa1b"
    shutil.copytree(sa1b_dir, root)
    path = root / "s0114_111.json"
    data = json.loads(path.read_text())
    ann = data["annotations"][1]
    if change == "truncate":
        ann["segmentation"]["counts"] = ann["segmentation"]["counts"][:-2]
    else:
        ann["area"] -= 3
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"s0114_111\.json: annotations\[1\] \(id 1\): "):
        Sa1bReader(root)


def test_sa1b_absurd_image_size(sa1b_dir, tmp_path, memory_cap):
    root = tmp_path / "sa1b"
    shutil.copytree(sa1b_dir, root)
    path = root / "s0114_111.json"
    data = json.loads(path.read_text())
    data["image"]["height"] = 10**9
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"s0114_111\.json: image: height is 1000000000"):
        Sa1bReader(root)


# ---- 3. ids are unique


def test_duplicate_image_ids(rles):
    data, read = rles
    data["images"][3]["id"] = data["images"][0]["id"]
    with pytest.raises(DataError, match=r"images\[3\]: image id 1 is also images\[0\]'s"):
        read(data)


def test_duplicate_annotation_ids(rles):
    data, read = rles
    data["annotations"][7]["id"] = data["annotations"][2]["id"]
    with pytest.raises(DataError, match=r"annotations\[7\] \(id 3\): annotation id 3 is also"):
        read(data)


# ---- 4. required keys and their types


def test_category_without_id(rles):
    data, read = rles
    del data["categories"][2]["id"]
    with pytest.raises(DataError, match=r"rle\.json: categories\[2\]: missing key 'id'"):
        read(data)


@pytest.mark.parametrize(
    ("where", "key", "value", "message"),
    [
        ("categories", "id", "liver", r"categories\[0\]: id is 'liver'"),
        ("annotations", "category_id", None, r"annotations\[0\] \(id 1\): category_id is None"),
        ("annotations", "image_id", [1], r"annotations\[0\] \(id 1\): image_id is \[1\]"),
        ("images", "id", None, r"images\[0\]: id is None"),
    ],
    ids=["category_id_name", "category_id_null", "image_id_list", "image_id_null"],
)
def test_ids_of_the_wrong_type(rles, where, key, value, message):
    data, read = rles
    data[where][0][key] = value
    with pytest.raises(DataError, match=message):
        read(data)


@pytest.mark.parametrize(
    ("where", "key", "message"),
    [
        ("annotations", "segmentation", r"annotations\[4\] \(id 5\): missing key 'segmentation'"),
        ("annotations", "image_id", r"annotations\[4\] \(id 5\): missing key 'image_id'"),
        ("images", "file_name", r"images\[4\] \(id 5\): missing key 'file_name'"),
        ("images", "id", r"images\[4\]: missing key 'id'"),
    ],
    ids=["ann_segmentation", "ann_image_id", "image_file_name", "image_id"],
)
def test_missing_required_keys(rles, where, key, message):
    data, read = rles
    del data[where][4][key]
    with pytest.raises(DataError, match=message):
        read(data)

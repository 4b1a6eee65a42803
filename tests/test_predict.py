"""The predict command's work: the prompts file, masks / scores / overlays on real images,
and every bad input (empty file, prompt outside the image, wrong checkpoint, unwritable
output) reported clearly and before the model is loaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from samft.data.images import read_rgb
from samft.infer.overlay import draw_overlay
from samft.infer.predict import list_images, predict
from samft.infer.predictor import SamPredictor
from samft.infer.prompts_file import (
    ALL_IMAGES,
    PromptsFileError,
    PromptSpec,
    check_inside,
    read_prompts_file,
)
from samft.io.files import OutputError
from samft.model.registry import build_sam
from samft.weights import CheckpointError, load_sam, save_sam

LIVER = "amos_0004_75.png"  # 512 x 512
PROMPTS = {
    LIVER: [
        {"points": [[300, 200]], "labels": [1]},
        {"name": "box", "box": [120, 100, 330, 300]},
        {
            "name": "both",
            "points": [[250, 200], [60, 60]],
            "labels": [1, 0],
            "box": [0, 0, 400, 400],
        },
    ],
    ALL_IMAGES: [{"points": [[20, 30]]}],
}


def write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(5)
    return save_sam(build_sam("tiny"), tmp_path_factory.mktemp("w") / "tiny.pth")


@pytest.fixture()
def images(ct_organs, tmp_path) -> Path:
    """Two CT slices in a folder, one of them in a subfolder."""
    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    shutil.copy(ct_organs / "images" / LIVER, folder / LIVER)
    shutil.copy(ct_organs / "images" / "s0114_111.png", folder / "more" / "s0114_111.png")
    return folder


# ------------------------------------------------------------------------ prompts file
def test_prompts_file_json_and_yaml_read_the_same(tmp_path):
    from_json = read_prompts_file(write(tmp_path / "p.json", PROMPTS))
    yaml_text = (
        f"{LIVER}:\n"
        "  - points: [[300, 200]]\n    labels: [1]\n"
        "  - {name: box, box: [120, 100, 330, 300]}\n"
        "  - name: both\n    points: [[250, 200], [60, 60]]\n    labels: [1, 0]\n"
        "    box: [0, 0, 400, 400]\n"
        "'*':\n  - points: [[20, 30]]\n"
    )
    from_yaml = read_prompts_file(write(tmp_path / "p.yaml", yaml_text))
    for a, b in zip(from_json.images[LIVER], from_yaml.images[LIVER], strict=True):
        assert a.name == b.name
        for field in ("points", "labels", "box"):
            x, y = getattr(a, field), getattr(b, field)
            assert (x is None and y is None) or np.array_equal(x, y)
    first = from_json.images[LIVER][0]
    assert first.name == "prompt_0" and first.is_single_point
    assert from_json.images[LIVER][2].labels.tolist() == [1, 0]
    default = from_json.for_image("more/other.png")[0]  # the "*" entry, labels default to 1
    assert default.labels.tolist() == [1] and not from_json.images[LIVER][1].is_single_point


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"is empty"),
        ("{}", r"is empty"),
        ({"a.png": []}, r"has no prompts"),
        ("{not json", r"is not valid JSON"),
        ([1, 2], r"top level is a list"),
        ({"a.png": [{"points": [[1, 2]], "labels": [2]}]}, r"prompt 0, key 'labels'.*1 \(object\)"),
        ({"a.png": [{"points": [[1, 2, 3]]}]}, r"key 'points'.*\[x, y\] pairs"),
        ({"a.png": [{"box": [5, 5, 1, 9]}]}, r"key 'box'.*x0 <= x1"),
        ({"a.png": [{"labels": [1]}]}, r"'labels' given without 'points'"),
        ({"a.png": [{"name": "x"}]}, r"neither 'points' nor 'box'"),
        ({"a.png": [{"point": [[1, 2]]}]}, r"unknown key\(s\) \['point'\]"),
        ({"a.png": [{"box": [0, 0, 1, 1], "name": "a/b"}]}, r"name='a/b'"),
        (
            {"a.png": [{"box": [0, 0, 1, 1], "name": "x"}, {"box": [0, 0, 2, 2], "name": "x"}]},
            r"two prompts are named 'x'",
        ),
    ],
)
def test_bad_prompts_files_are_clear_errors(tmp_path, content, message):
    path = write(tmp_path / "prompts.json", content)
    with pytest.raises(PromptsFileError, match=message) as error:
        read_prompts_file(path)
    assert str(path) in str(error.value)


def test_prompt_outside_the_image_names_file_image_and_point(tmp_path):
    prompts = read_prompts_file(write(tmp_path / "p.json", {"a.png": [{"points": [[700, 20]]}]}))
    with pytest.raises(
        PromptsFileError,
        match=r"image 'a.png', prompt 'prompt_0': point "
        r"\(x=700, y=20\) lies outside the image of 640 x 480",
    ):
        check_inside(prompts.images["a.png"][0], 480, 640, "image 'a.png'")
    check_inside(prompts.images["a.png"][0], 480, 700, "edge is inside")


# --------------------------------------------------------------------------- predict
def test_predict_writes_masks_scores_and_overlays(weights, images, tmp_path):
    prompts = write(tmp_path / "prompts.json", PROMPTS)
    out = tmp_path / "out"
    report = predict(weights, images, prompts, out, device="cpu")

    assert [entry["image"] for entry in report["images"]] == [LIVER, "more/s0114_111.png"]
    assert json.loads((out / "scores.json").read_text()) == report
    liver = report["images"][0]
    assert [p["name"] for p in liver["prompts"]] == ["prompt_0", "box", "both"]
    assert [p["multimask_output"] for p in liver["prompts"]] == [True, False, False]

    # the PNGs are exactly the predictor's best mask for each prompt
    predictor = SamPredictor(load_sam(weights))
    image = read_rgb(images / LIVER)
    predictor.set_image(image)
    for spec, entry in zip(PROMPTS[LIVER], liver["prompts"], strict=True):
        masks, scores, _ = predictor.predict(
            point_coords=np.array(spec["points"]) if "points" in spec else None,
            point_labels=np.array(spec["labels"]) if "labels" in spec else None,
            box=np.array(spec["box"]) if "box" in spec else None,
            multimask_output=entry["multimask_output"],
        )
        best = int(np.argmax(scores))
        saved = np.asarray(Image.open(out / entry["mask"]))
        assert saved.shape == image.shape[:2] and set(np.unique(saved)) <= {0, 255}
        np.testing.assert_array_equal(saved > 0, masks[best])
        assert entry["score"] == pytest.approx(float(scores[best]), abs=1e-6)
        assert entry["area"] == int(masks[best].sum())

    nested = report["images"][1]
    assert nested["prompts"][0]["mask"] == "more/s0114_111/prompt_0.png"  # from "*"
    overlay = np.asarray(Image.open(out / nested["overlay"]))
    assert overlay.shape == (nested["height"], nested["width"], 3)


def test_single_image_input_and_images_without_prompts_are_skipped(weights, images, tmp_path):
    prompts = write(tmp_path / "prompts.json", {LIVER: [{"box": [10, 10, 200, 200]}]})
    report = predict(weights, images, prompts, tmp_path / "out", overlay=False)
    assert [entry["image"] for entry in report["images"]] == [LIVER]
    assert "overlay" not in report["images"][0]
    single = predict(weights, images / LIVER, prompts, tmp_path / "one")
    assert [entry["image"] for entry in single["images"]] == [LIVER]


def test_overlay_tints_the_mask_and_draws_the_points():
    image = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[5:35, 30:55] = True
    prompt = PromptSpec("p", points=np.array([[10.0, 20.0]]), labels=np.array([0]))
    picture = draw_overlay(image, [mask], [prompt], [0.5])
    assert (picture[20, 40] != 100).any()  # inside the mask: tinted
    assert tuple(picture[20, 10]) == (230, 30, 30)  # the negative point, red
    assert tuple(picture[38, 2]) == (100, 100, 100)  # elsewhere: untouched


# ------------------------------------------------------------------------- bad input
def test_prompt_outside_an_image_fails_before_the_model_is_loaded(images, tmp_path):
    prompts = write(tmp_path / "p.json", {LIVER: [{"box": [10, 10, 600, 200]}]})
    with pytest.raises(
        PromptsFileError,
        match=r"image 'amos_0004_75.png'.*box corner "
        r"\(x=600, y=200\) lies outside the image of 512 x 512",
    ):
        predict(tmp_path / "no_such_checkpoint.pth", images, prompts, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_image_name_typo_in_the_prompts_file_is_an_error(weights, images, tmp_path):
    prompts = write(tmp_path / "p.json", {"amos_0004_57.png": [{"points": [[1, 1]]}]})
    with pytest.raises(PromptsFileError, match=r"names image\(s\) \['amos_0004_57.png'\]"):
        predict(weights, images, prompts, tmp_path / "out")


def test_empty_prompts_file_is_an_error(weights, images, tmp_path):
    with pytest.raises(PromptsFileError, match="is empty"):
        predict(weights, images, write(tmp_path / "p.json", "{}"), tmp_path / "out")


def test_unwritable_output_folder_fails_before_the_model_is_loaded(images, tmp_path):
    prompts = write(tmp_path / "p.json", PROMPTS)
    blocker = write(tmp_path / "blocker", "a file, not a folder")
    with pytest.raises(OutputError, match=r"output=.*blocker/out.*cannot write to folder"):
        predict(tmp_path / "no_such_checkpoint.pth", images, prompts, blocker / "out")


def test_checkpoint_of_the_wrong_kind_is_a_clear_error(images, tmp_path):
    prompts = write(tmp_path / "p.json", PROMPTS)
    path = tmp_path / "image_not_weights.pth"
    shutil.copy(images / LIVER, path)
    with pytest.raises(CheckpointError, match=r"image_not_weights\.pth"):
        predict(path, images, prompts, tmp_path / "out")


def test_input_without_images_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"input=.*empty: the folder holds no image"):
        list_images(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"no such image or folder"):
        list_images(tmp_path / "missing")

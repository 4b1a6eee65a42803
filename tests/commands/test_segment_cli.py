"""`python -m samft segment checkpoint=... input=... output=...` end to end, on a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from samft.__main__ import main
from samft.infer.record_masks import records_to_labels, segmentation_mask
from samft.infer.segment import label_ids, segment
from samft.model.registry import build_sam
from samft.weights import save_sam
from samft.weights.export import export_checkpoint


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_sam(build_sam("tiny"), tmp_path_factory.mktemp("w") / "tiny.safetensors")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two small pictures of bright shapes, one in a sub-folder."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (40, 56), "sub/b.jpg": (48, 32)}.items():
        image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        image[5:20, 8:30] = (230, 200, 40)
        image[25:35, 4:14] = (40, 90, 240)
        (folder / name).parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / name, quality=95)
    return folder


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SAMFT_COMMAND"}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "samft", "segment", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)


def test_the_documented_command_line(weights, photos, tmp_path):
    """Every image gets labels.png, masks.json and overlay.png; the ids of labels.png are
    exactly the JSON's non-null ids, each painted inside its own mask."""
    done = _run_cli(
        f"checkpoint={weights}", f"input={photos}", "output=segments", "points_per_side=4",
        "pred_iou_thresh=0", "stability_score_thresh=0", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = tmp_path / "segments"
    report = json.loads((out / "segments.json").read_text())
    assert [entry["image"] for entry in report["images"]] == ["a.png", "sub/b.jpg"]
    assert report["settings"]["pred_iou_thresh"] == 0.0
    assert report["thresholds_source"]["pred_iou_thresh"] == "given"
    for entry in report["images"]:
        labels = np.asarray(Image.open(out / entry["labels"]))
        assert labels.dtype == np.uint16 and labels.shape == (entry["height"], entry["width"])
        assert Image.open(out / entry["overlay"]).size == (entry["width"], entry["height"])
        masks = json.loads((out / entry["masks"]).read_text())["masks"]
        assert len(masks) == entry["n_masks"] > 0
        assert {"segmentation", "predicted_iou", "stability_score", "area", "bbox"} <= set(masks[0])
        ids = [m["id"] for m in masks if m["id"] is not None]
        assert sorted(ids) == list(range(1, labels.max() + 1)) == list(range(1, len(ids) + 1))
        assert set(np.unique(labels)) - {0} == set(ids)
        for m in masks:
            mask = segmentation_mask(m["segmentation"])
            assert int(mask.sum()) == m["area"]
            if m["id"] is not None:
                assert (labels == m["id"]).any() and mask[labels == m["id"]].all()
        areas = [m["area"] for m in masks]
        assert areas == sorted(areas, reverse=True)


def test_crop_settings_reach_the_generator(weights, photos, tmp_path, monkeypatch):
    """`crop_n_layers` and `crop_overlap_ratio` set the generator's crops (the image's
    crop boxes are made with them) and are reported; every mask's crop is one of them."""
    from samft.infer import automatic

    asked = []

    def spy_crop_boxes(image_size, n_layers, overlap_ratio):
        asked.append((n_layers, overlap_ratio))
        return crop_boxes(image_size, n_layers, overlap_ratio)

    crop_boxes = automatic.crop_boxes
    monkeypatch.setattr(automatic, "crop_boxes", spy_crop_boxes)
    report = segment(
        weights, photos / "a.png", tmp_path / "out", points_per_side=4, pred_iou_thresh=0.0,
        stability_score_thresh=0.0, crop_n_layers=1, crop_overlap_ratio=0.2, overlay=False,
    )  # fmt: skip
    assert asked == [(1, 0.2)]
    assert report["settings"]["crop_overlap_ratio"] == 0.2
    entry = report["images"][0]
    boxes, _ = crop_boxes((entry["height"], entry["width"]), 1, 0.2)
    allowed = {(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes}
    masks = json.loads((tmp_path / "out" / entry["masks"]).read_text())["masks"]
    assert masks and {tuple(m["crop_box"]) for m in masks} <= allowed


def test_label_ids_by_hand():
    """Painted largest first, each smaller one over them: `big` gets 1, `covered` (inside
    `big`, larger than the `small` masks) comes next, but `small_a` and `small_b` cover all
    of it: `covered` has no id; the 1 px masks follow in input order: 2, 3 and 4."""
    big, covered, small_a, small_b, apart = (np.zeros((6, 6), bool) for _ in range(5))
    big[0:4, 0:4] = True
    covered[1, 1:3] = True
    small_a[1, 1] = True
    small_b[1, 2] = True
    apart[5, 5] = True
    records = [
        {"segmentation": small_a, "area": 1},
        {"segmentation": big, "area": 16},
        {"segmentation": covered, "area": 2},
        {"segmentation": apart, "area": 1},
        {"segmentation": small_b, "area": 1},
    ]
    labels = records_to_labels(records, (6, 6))
    expected = np.zeros((6, 6), np.uint32)
    expected[big], expected[small_a], expected[apart], expected[small_b] = 1, 2, 3, 4
    np.testing.assert_array_equal(labels, expected)
    assert label_ids(records, labels.shape) == [2, 1, None, 3, 4]


def test_thresholds_come_from_the_sidecar(weights, photos, tmp_path):
    """Null thresholds: the export sidecar's `automatic_thresholds`, else Meta's defaults;
    a given threshold wins over the sidecar."""
    stem = tmp_path / "exports" / "my_sam"
    chosen = {"pred_iou_thresh": 0.01, "stability_score_thresh": 0.02, "mSA": 0.5}
    written = export_checkpoint(weights, stem, format="pth", automatic_thresholds=chosen)
    sidecar = json.loads(written["sidecar"].read_text())
    assert sidecar["automatic_thresholds"] == chosen
    image = photos / "a.png"

    report = segment(written["pth"], image, tmp_path / "out1", points_per_side=2)
    assert report["settings"]["pred_iou_thresh"] == 0.01
    assert report["settings"]["stability_score_thresh"] == 0.02
    assert report["thresholds_source"]["pred_iou_thresh"] == f"sidecar {written['sidecar']}"
    assert report["settings"]["covered_thresh"] == 1.0  # not in that sidecar: Meta's (off)
    assert report["thresholds_source"]["covered_thresh"] == "Meta's default"

    suppressing = export_checkpoint(
        weights, tmp_path / "exports" / "one_per_object", format="pth",
        automatic_thresholds={**chosen, "covered_thresh": 0.5},
    )  # fmt: skip
    report = segment(suppressing["pth"], image, tmp_path / "out4", points_per_side=2)
    assert report["settings"]["covered_thresh"] == 0.5
    with pytest.raises(ValueError, match="covered_thresh = 2"):
        export_checkpoint(
            weights, tmp_path / "exports" / "bad", format="pth",
            automatic_thresholds={**chosen, "covered_thresh": 2},
        )  # fmt: skip

    report = segment(written["pth"], image, tmp_path / "out2", 2, pred_iou_thresh=0.3)
    assert report["settings"]["pred_iou_thresh"] == 0.3
    assert report["settings"]["stability_score_thresh"] == 0.02

    report = segment(weights, image, tmp_path / "out3", points_per_side=2)  # no sidecar
    assert report["settings"]["pred_iou_thresh"] == 0.88
    assert report["settings"]["stability_score_thresh"] == 0.95
    assert report["settings"]["covered_thresh"] == 1.0
    assert set(report["thresholds_source"].values()) == {"Meta's default"}


def _cli_error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as raised:
        main(["samft", "segment", *args])
    assert raised.value.code == 2
    return capsys.readouterr().err


def test_bad_inputs_are_short_errors_naming_the_file(photos, tmp_path, capsys):
    """Each checked before the model loads: the checkpoint given does not even exist."""
    missing_ckpt = f"checkpoint={tmp_path / 'never_loaded.pth'}"
    err = _cli_error(capsys, missing_ckpt, "input=nowhere", "output=out")
    assert "input=nowhere: no such image or folder" in err and "Traceback" not in err

    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    err = _cli_error(capsys, missing_ckpt, f"input={notes}", "output=out")
    assert f"{notes} is not an image" in err

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "fake.png").write_text("not a png")
    err = _cli_error(capsys, missing_ckpt, f"input={broken}", "output=out")
    assert f"{broken / 'fake.png'} is not an image" in err

    err = _cli_error(capsys, missing_ckpt, f"input={photos}", f"output={notes}/out")
    assert f"output={notes}/out: cannot write" in err

    err = _cli_error(capsys, missing_ckpt, f"input={photos}", "output=out")
    assert "never_loaded.pth" in err  # only now is the checkpoint looked at


def test_an_image_without_masks_is_explained_in_the_log_and_the_overlay(
    weights, photos, tmp_path, caplog
):
    from samft.infer.instance_overlay import draw_instances

    caplog.set_level("INFO")
    image = tmp_path / "a.png"
    Image.open(photos / "a.png").resize((224, 160)).save(image)
    segment(
        weights,
        image,
        tmp_path / "out",
        points_per_side=2,
        pred_iou_thresh=1.0,
        stability_score_thresh=1.0,
    )  # fmt: skip  (no mask can pass these)
    assert "a.png: no mask kept at pred_iou_thresh=1, stability_score_thresh=1" in caplog.text
    assert "instance.write_thresholds_to=" in caplog.text
    assert "segment: 1/1 images" in caplog.text  # a progress line: the log is no terminal
    overlay = np.asarray(Image.open(tmp_path / "out" / "a" / "overlay.png"))
    picture = np.asarray(Image.open(image).convert("RGB"))
    plain = draw_instances(picture, np.zeros(picture.shape[:2], dtype=np.int32))
    assert (overlay != plain).any(axis=2)[:12].mean() > 0.5  # the note darkens the top rows
    assert (overlay == plain).all(axis=2)[-60:].all()  # the rest of the picture is untouched


def test_progress_lines_say_done_elapsed_and_left(monkeypatch, caplog):
    from samft.io import progress

    clock = iter([100.0, 103.0, 104.0, 130.0])  # start, then one reading per update
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    caplog.set_level("INFO")
    lines = progress.ProgressLines("eval", 4, every_s=10)
    assert lines.update(1) == "eval: 1/4 images, 3 s elapsed, ~9 s left"
    assert lines.update(2) is None  # 1 s after the last line
    assert lines.update(4) == "eval: 4/4 images, 30 s elapsed"


def test_sigterm_stops_segment_with_what_it_finished_whole(weights, photos, tmp_path):
    """A stop signal in the middle of a folder: exit 143, the images done are complete, the
    run's index (segments.json) is not written."""
    import signal
    import time

    many = tmp_path / "many"
    many.mkdir()
    picture = Image.open(photos / "a.png")
    for i in range(40):
        picture.save(many / f"img{i:02d}.png")
    env = {k: v for k, v in os.environ.items() if k != "SAMFT_COMMAND"}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "samft", "segment", f"checkpoint={weights}",
               f"input={many}", "output=out", "points_per_side=8"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    first = tmp_path / "out" / "img00" / "masks.json"
    deadline = time.time() + 120
    while time.time() < deadline and not first.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, err[-2000:]
    assert "samft segment: stopped by SIGTERM" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "segments.json").exists()
    done = [p.parent for p in (tmp_path / "out").glob("*/masks.json")]
    assert 0 < len(done) < 40
    for folder in done:  # every file of a finished image reads back whole
        json.loads((folder / "masks.json").read_text())
        assert np.asarray(Image.open(folder / "labels.png")).shape == (40, 56)
    assert not list((tmp_path / "out").rglob(".*.tmp"))

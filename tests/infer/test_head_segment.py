"""Instances from an instance head, end to end: a head that answers the exact maps gives the
exact instances; a trained checkpoint's head survives export -> load; `segment` picks the
head by default and the grid on request; `eval mode=instance` scores both side by side."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from head_runs import save_head_checkpoint
from PIL import Image
from scipy import ndimage as ndi
from torch import nn

from samft.__main__ import main
from samft.data.instance_targets import instance_targets
from samft.data.readers import build_reader
from samft.evaluate.automatic import ground_truth_labels
from samft.evaluate.head import evaluate_head
from samft.infer.head_segment import HeadInstanceSegmenter
from samft.infer.instance_watershed import relabel, seeded_watershed
from samft.infer.record_masks import segmentation_mask
from samft.infer.segment import segment
from samft.model.registry import build_sam
from samft.train.instance_metrics import instance_scores
from samft.weights import load_instance_head, load_sam, read_state_dict
from samft.weights.export import export_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


class ExactHead(nn.Module):
    """Answers the targets of a fixed id map (padded to the input square) as logits."""

    def __init__(self, labels: np.ndarray, size: int) -> None:
        super().__init__()
        maps = np.zeros((3, size, size), dtype=np.float32)
        maps[:, : labels.shape[0], : labels.shape[1]] = instance_targets(labels)
        probs = torch.from_numpy(maps).clamp(1e-4, 1 - 1e-4)
        self.register_buffer("logits", torch.logit(probs)[None])

    def forward(self, embeddings, images=None, skips=()):
        return self.logits.expand(embeddings.shape[0], -1, -1, -1)


def _labels() -> np.ndarray:
    labels = np.zeros((48, 64), dtype=np.int32)
    rr, cc = np.indices(labels.shape)
    labels[(rr - 20) ** 2 + (cc - 18) ** 2 <= 64] = 4
    labels[((rr - 20) ** 2 + (cc - 33) ** 2 <= 64) & (labels == 0)] = 9  # touching
    labels[40:44, 50:60] = 2
    return labels


def test_exact_maps_give_the_exact_instances_and_records():
    torch.manual_seed(0)
    labels = _labels()
    sam = build_sam("tiny", image_size=64)
    image = np.zeros((48, 64, 3), dtype=np.uint8)  # already in the input frame
    segmenter = HeadInstanceSegmenter(sam, ExactHead(labels, 64))
    found = segmenter.labels(image)
    np.testing.assert_array_equal(found, relabel(labels))
    records = segmenter.generate(image)
    assert [r["area"] for r in records] == [int((found == i).sum()) for i in (1, 2, 3)]
    assert records[2]["bbox"] == [50, 40, 9, 3]  # [x, y, x1 - x0, y1 - y0]
    assert records[0]["point_coords"] == [[18.0, 20.0]]  # the first disc's centre
    assert all(r["score"] > 0.99 for r in records)
    coco = HeadInstanceSegmenter(sam, ExactHead(labels, 64), output_mode="coco_rle")
    for plain, rle in zip(records, coco.generate(image), strict=True):
        np.testing.assert_array_equal(segmentation_mask(rle["segmentation"]), plain["segmentation"])
    # an image twice as large: the maps are resized to it before the watershed
    big = segmenter.labels(np.zeros((96, 128, 3), dtype=np.uint8))
    assert big.shape == (96, 128) and big.max() == 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A samft Lightning checkpoint of a tiny SAM with a (random) instance head."""
    path = tmp_path_factory.mktemp("run") / "last.ckpt"
    save_head_checkpoint(path, "tiny", 64)
    return path


@pytest.fixture(scope="module")
def nuclei(shared_data, tmp_path_factory) -> Path:
    """Two real val images of DSB 2018 nuclei with their instance masks."""
    root = tmp_path_factory.mktemp("dsb")
    source = shared_data / "dsb-nuclei" / "val"
    for folder in ("images", "masks"):
        (root / folder).mkdir()
        for name in sorted(p.name for p in (source / "masks").iterdir())[:2]:
            shutil.copy(source / folder / name, root / folder / name)
    return root


def test_export_keeps_the_sam_file_and_writes_the_head_beside_it(trained, nuclei, tmp_path):
    written = export_checkpoint(trained, tmp_path / "exp" / "m")
    assert written["instance_head"].name == "m.instance_head.safetensors"
    sam_keys = set(read_state_dict(written["pth"]))
    assert not any(k.startswith("instance_head") for k in sam_keys)
    assert sam_keys == set(read_state_dict(trained))
    sidecar = json.loads(written["sidecar"].read_text())
    entry = sidecar["instance_head"]
    assert entry["path"] == "m.instance_head.safetensors"
    assert entry["arguments"]["upsample_factor"] == 16 and entry["arguments"]["width"] == 16
    assert sidecar["files"]["instance_head"]["sha256"] == entry["sha256"]

    image = np.array(Image.open(next((nuclei / "images").iterdir())).convert("RGB"))
    from_run = HeadInstanceSegmenter(load_sam(trained), load_instance_head(trained))
    from_export = HeadInstanceSegmenter(
        load_sam(written["pth"]), load_instance_head(written["safetensors"])
    )
    np.testing.assert_allclose(from_run.maps(image), from_export.maps(image), atol=1e-6)
    assert load_instance_head(tmp_path / "exp" / "m.pth") is not None
    torch.manual_seed(0)
    plain = tmp_path / "plain.pth"
    torch.save(build_sam("tiny", image_size=64).state_dict(), plain)
    assert load_instance_head(plain) is None and load_instance_head("litemedsam") is None


def test_segment_uses_the_head_by_default_and_the_grid_on_request(trained, nuclei, tmp_path):
    head = segment(trained, nuclei / "images", tmp_path / "head", head_thresholds={"min_size": 0})
    assert head["mode"] == "head" and len(head["images"]) == 2
    first = head["images"][0]
    labels = np.array(Image.open(tmp_path / "head" / first["labels"]))
    masks = json.loads((tmp_path / "head" / first["masks"]).read_text())["masks"]
    assert labels.max() == len(masks) == first["n_instances"]
    assert all("score" in m for m in masks)
    grid = segment(
        trained, nuclei / "images", tmp_path / "grid", mode="grid", points_per_side=2,
        pred_iou_thresh=0.0, stability_score_thresh=0.0,
    )  # fmt: skip
    assert grid["mode"] == "grid"
    plain = tmp_path / "plain.pth"
    torch.save(build_sam("tiny", image_size=64).state_dict(), plain)
    with pytest.raises(ValueError, match="holds no instance head"):
        segment(plain, nuclei / "images", tmp_path / "none", mode="head")


def test_eval_scores_the_grid_and_the_head_side_by_side(trained, nuclei, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    main(
        [
            "samft", "eval", "mode=instance", f"checkpoint={trained}", "trainer=cpu",
            "data=folder", f"data.val.images={nuclei / 'images'}",
            f"data.val.masks={nuclei / 'masks'}", "instance.generator=both",
            "instance.points_per_side=2", "instance.pred_iou_threshs=[0.0]",
            "instance.stability_score_threshs=[0.0]",
            "instance.center_threshs=[0.4,0.6]", "output=eval.json", "max_images=1",
        ]
    )  # fmt: skip
    report = json.loads((tmp_path / "eval.json").read_text())
    grid, head = (c["metrics"] for c in report["checkpoints"])
    assert grid["pred_iou_thresh"] == 0.0 and head["pred_iou_thresh"] is None
    assert head["center_thresh"] in (0.4, 0.6) and head["foreground_thresh"] == 0.5
    assert head["n_images"] == 1 and head["seconds_per_image"] > 0
    assert len(report["checkpoints"][1]["grid_search"]["rows"]) == 2
    assert "mSA" in report["difference_b_minus_a"]


def test_eval_searches_the_smallest_instance_size(trained, nuclei, monkeypatch):
    """The head answers an image's exact maps plus a 3-pixel speck on the background: the
    search over `min_sizes` keeps min_size 4, which drops the speck and nothing else, and
    its scores are those of the watershed run by hand at that size."""
    spec = {"format": "folder", "images": str(nuclei / "images"), "masks": str(nuclei / "masks")}
    reader = build_reader(spec, "data.val")
    record = reader.records[0]
    truth = ground_truth_labels(reader.load(record, range(len(record.objects))).masks)
    assert truth.ndim == 2 and np.bincount(truth.ravel())[1:].min() >= 4
    free = ndi.binary_erosion(truth == 0, np.ones((7, 7)), border_value=0)
    row, col = np.argwhere(free)[0]
    with_speck = truth.copy()
    with_speck[row, col - 1 : col + 2] = truth.max() + 1  # 1 x 3 pixels, 3 px from any nucleus
    maps = instance_targets(with_speck)
    monkeypatch.setattr(HeadInstanceSegmenter, "maps", lambda self, image: maps)

    result = evaluate_head(trained, spec, min_sizes=[0, 4], max_images=1, device="cpu")
    rows = {row["min_size"]: row for row in result.search.rows}
    assert set(rows) == {0, 4} and result.summary.metrics["min_size"] == 4
    assert rows[0]["n_pred"] == rows[4]["n_pred"] + 1 == truth.max() + 1
    assert rows[4]["mSA"] > rows[0]["mSA"]
    by_hand = instance_scores(seeded_watershed(*maps, min_size=4), truth)
    assert result.summary.metrics["mSA"] == pytest.approx(by_hand["mSA"])
    assert result.summary.metrics["n_pred"] == by_hand["n_pred"]


@pytest.mark.parametrize("sizes", ["[-4]", "[8,2.5]"])
def test_eval_refuses_a_min_size_that_is_not_a_pixel_count(
    sizes, trained, nuclei, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit) as stopped:
        main(
            [
                "samft", "eval", "mode=instance", f"checkpoint={trained}", "trainer=cpu",
                "data=folder", f"data.val.images={nuclei / 'images'}",
                f"data.val.masks={nuclei / 'masks'}", f"instance.min_sizes={sizes}",
            ]
        )  # fmt: skip
    assert stopped.value.code != 0
    assert "sizes are whole pixel counts >= 0" in capsys.readouterr().err
    assert not (tmp_path / "eval.json").exists()

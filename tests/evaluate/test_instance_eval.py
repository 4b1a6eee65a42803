"""`samft eval mode=instance` on two real DSB 2018 images with LiteMedSAM's released weights:
the report's numbers equal the instance metrics computed by hand on the same masks."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from samft.__main__ import main
from samft.evaluate.automatic import InstanceResult
from samft.evaluate.coco_ap import coco_mask_ap
from samft.evaluate.instance_report import build_instance_report, format_instance_table
from samft.evaluate.report import CheckpointSummary
from samft.evaluate.threshold_search import GridSearchResult
from samft.infer.automatic import AutomaticMaskGenerator
from samft.infer.mask_candidates import select_masks, to_records
from samft.infer.record_masks import records_to_labels, segmentation_mask
from samft.infer.segment import resolve_thresholds
from samft.train.instance_metrics import aggregate, instance_scores, iou_matrix
from samft.weights.export import export_checkpoint

# the two val images where LiteMedSAM's 4 x 4 point masks hit some nuclei (IoU > 0.5)
IMAGES = ("4d4f254f3b8b4408.png", "e5384c905e9879cb.png")
IOUS, STABILITIES = [0.1, 0.17, 0.2], [0.0]


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Run `python -m samft eval ...` in-process, in tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name in ("SAMFT_COMMAND", "SAMFT_TRACEBACK", "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield lambda *args: main(["samft", "eval", *args])
    torch.set_num_threads(threads)


@pytest.fixture
def split(shared_data, tmp_path) -> Path:
    root = tmp_path / "dsb"
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
        for name in IMAGES:
            shutil.copy(shared_data / "dsb-nuclei" / "val" / folder / name, root / folder / name)
    return root


def _data(split: Path) -> list[str]:
    return [
        "data=folder", f"data.val.images={split / 'images'}", f"data.val.masks={split / 'masks'}",
        "data.train.images=unused", "data.train.masks=unused", "trainer=cpu",
    ]  # fmt: skip


def test_instance_eval_equals_the_metrics_by_hand(cli, split, tmp_path, monkeypatch):
    exported = export_checkpoint("litemedsam", tmp_path / "exports" / "lms", format="pth")
    proposed = []  # the candidates the eval's generator proposed, per image
    original = AutomaticMaskGenerator.propose

    def spy(self, *args, **kwargs):
        proposed.append(original(self, *args, **kwargs))
        return proposed[-1]

    monkeypatch.setattr(AutomaticMaskGenerator, "propose", spy)
    cli(
        "mode=instance", f"checkpoint={exported['pth']}", *_data(split),
        "instance.points_per_side=4", f"instance.pred_iou_threshs={IOUS}",
        f"instance.stability_score_threshs={STABILITIES}",
        f"instance.write_thresholds_to={exported['sidecar']}", "output=eval.json",
    )  # fmt: skip
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["mode"] == "instance" and len(report["checkpoints"]) == 1
    entry = report["checkpoints"][0]
    metrics = entry["metrics"]
    assert [image["image_id"] for image in entry["images"]] == [n[:-4] for n in IMAGES]
    assert len(proposed) == 2

    # by hand: the same candidates, every cell, micro-sam's label images, Hungarian SA
    truths = [np.asarray(Image.open(split / "masks" / name)) for name in IMAGES]
    rows = {}
    for iou in IOUS:
        for stab in STABILITIES:
            scores = []
            for candidates, truth in zip(proposed, truths, strict=True):
                records = _select(candidates, iou, stab)
                labels = records_to_labels(records, truth.shape, 0, True, True)
                scores.append(instance_scores(labels, truth))
            rows[(iou, stab)] = aggregate(scores)
    best = max(rows, key=lambda cell: rows[cell]["mSA"])
    assert (metrics["pred_iou_thresh"], metrics["stability_score_thresh"]) == best
    for key in ("mSA", "SA50", "SA75", "precision50", "recall50", "n_pred", "n_gt"):
        assert metrics[key] == pytest.approx(rows[best][key])
    assert metrics["n_gt"] == sum(int(t.max()) for t in truths) == 43
    assert 0 < metrics["SA50"] < 1
    for row in entry["grid_search"]["rows"]:
        assert row["mSA"] == pytest.approx(rows[(row["pred_iou_thresh"], 0.0)]["mSA"])

    kept = [_select(candidates, *best) for candidates in proposed]
    assert metrics["n_masks"] == sum(map(len, kept)) > 0
    ap = coco_mask_ap(kept, truths)
    assert (metrics["AP"], metrics["AP50"]) == (pytest.approx(ap["AP"]), pytest.approx(ap["AP50"]))
    errors = []
    for records, truth in zip(kept, truths, strict=True):
        masks = np.stack([segmentation_mask(r["segmentation"]) for r in records])
        best_iou = iou_matrix(masks, truth).max(axis=1)
        errors += [abs(r["predicted_iou"] - b) for r, b in zip(records, best_iou, strict=True)]
    assert metrics["iou_head_mae"] == pytest.approx(np.mean(errors))

    # the chosen thresholds went into the export's sidecar, where `segment` finds them
    sidecar = json.loads(exported["sidecar"].read_text())["automatic_thresholds"]
    assert (sidecar["pred_iou_thresh"], sidecar["stability_score_thresh"]) == best
    assert sidecar["covered_thresh"] == 1.0  # chosen without covered-mask suppression
    values, sources = resolve_thresholds(exported["pth"])
    assert (values["pred_iou_thresh"], values["stability_score_thresh"]) == best
    assert values["covered_thresh"] == 1.0
    assert sources["pred_iou_thresh"] == f"sidecar {exported['sidecar']}"


def _select(candidates, iou: float, stab: float) -> list[dict]:
    """The records `generate` gives at these thresholds (official NMS defaults)."""
    return to_records(select_masks(candidates, iou, stab, 0.7, 0.7), "uncompressed_rle")


def test_thresholds_are_not_written_into_another_models_sidecar(cli, split, tmp_path, capsys):
    """Checked before any model runs: the sidecar must describe the evaluated checkpoint."""
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "samft-export/1", "source": {"sha256": "0"}}))
    with pytest.raises(SystemExit):
        cli(
            "mode=instance", "checkpoint=litemedsam", *_data(split),
            f"instance.write_thresholds_to={other}", "output=eval.json",
        )  # fmt: skip
    assert f"instance.write_thresholds_to={other} describes another model" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        cli("mode=everything", "checkpoint=litemedsam", *_data(split))
    assert "mode=everything; expected one of ['prompted', 'instance']" in capsys.readouterr().err


def test_two_checkpoints_side_by_side():
    """A, B and B - A, counts as integers and thresholds beside the scores."""

    def result(path: str, msa: float, n_pred: int) -> InstanceResult:
        metrics = {"mSA": msa, "n_pred": n_pred, "pred_iou_thresh": 0.8,
                   "stability_score_thresh": 0.9}  # fmt: skip
        search = GridSearchResult(rows=[metrics], best=metrics, criterion="mSA")
        return InstanceResult(CheckpointSummary(path, "weights", "vit_b", 1024, metrics), search)

    results = [result("a.pth", 0.25, 10), result("b.pth", 0.5, 12)]
    table = format_instance_table(results)
    assert "A: a.pth (weights, vit_b, 1024 px)" in table
    lines = [line.split() for line in table.splitlines()]
    assert ["mSA", "0.2500", "0.5000", "+0.2500"] in lines
    assert ["n_pred", "10", "12", "+2"] in lines
    assert ["pred_iou_thresh", "0.800", "0.800", "+0.000"] in lines
    report = build_instance_report(results, {"split": "val"})
    assert report["difference_b_minus_a"]["mSA"] == 0.25
    assert report["checkpoints"][1]["chosen_thresholds"] == {
        "pred_iou_thresh": 0.8, "stability_score_thresh": 0.9,
    }  # fmt: skip


def test_crowd_regions_are_not_objects_to_find(tmp_path):
    """A COCO `iscrowd: 1` region is ignored, as COCO does: not in n_gt, never missed."""
    from samft.evaluate.automatic import evaluate_automatic
    from samft.model.registry import build_sam
    from samft.weights import save_sam

    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[8:24, 8:24] = 200
    image[40:60, 30:60] = 120
    (tmp_path / "images").mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "a.png")

    def square(y0, y1, x0, x1):
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    objects = [(square(8, 24, 8, 24), 0), (square(40, 60, 30, 60), 1)]  # the second a crowd
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 64}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": seg,
                "iscrowd": crowd,
                "area": 1.0,
                "bbox": [0, 0, 1, 1],
            }
            for i, (seg, crowd) in enumerate(objects)
        ],  # fmt: skip
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    torch.manual_seed(0)
    checkpoint = save_sam(build_sam("tiny"), tmp_path / "tiny.pth")
    spec = {
        "format": "coco",
        "annotations": str(tmp_path / "coco.json"),
        "images": str(tmp_path / "images"),
    }
    result = evaluate_automatic(
        checkpoint, spec, points_per_side=2, pred_iou_threshs=[0.0], stability_score_threshs=[0.0]
    )
    assert result.summary.metrics["n_gt"] == 1 and result.images[0]["n_gt"] == 1


def test_a_sidecar_on_a_read_only_disk_is_refused_before_any_model_runs(tmp_path, read_only_folder):
    from samft.commands.eval_instance import sidecar_targets
    from samft.io.files import OutputError
    from samft.model.registry import build_sam
    from samft.weights import save_sam

    torch.manual_seed(0)
    weights = save_sam(build_sam("tiny"), tmp_path / "tiny.pth")
    folder, seal = read_only_folder
    exported = export_checkpoint(weights, folder / "tiny", format="pth")
    assert sidecar_targets(str(exported["sidecar"]), [str(weights)]) == [exported["sidecar"]]
    seal()
    with pytest.raises(OutputError, match=rf"instance.write_thresholds_to={exported['sidecar']}"):
        sidecar_targets(str(exported["sidecar"]), [str(weights)])

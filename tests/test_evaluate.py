"""Evaluation: deterministic prompts of every type per object, metrics that agree with the
predictor run by hand on the same prompts, two-checkpoint reports, checkpoint kinds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_export import make_tuner, save_lightning_checkpoint

from samft.data.prompts import tight_box
from samft.evaluate.prompted import (
    DEFAULT_PROMPTS,
    build_evaluation_dataset,
    build_samplers,
    evaluate_checkpoint,
)
from samft.evaluate.report import (
    CheckpointSummary,
    build_report,
    describe_checkpoint,
    format_table,
)
from samft.infer.predictor import SamPredictor
from samft.model.prompts import PROMPT_BOX, PROMPT_ONE_POINT, PROMPT_POINTS
from samft.model.registry import build_sam
from samft.weights import CheckpointError, load_sam, save_sam

CPU = {"accelerator": "cpu"}
SIZES = ("small", "medium", "large")


@pytest.fixture(scope="module")
def ct_spec(ct_organs) -> dict:
    return {"format": "coco", "annotations": str(ct_organs / "annotations.json")}


@pytest.fixture(scope="module")
def dataset(ct_spec):
    return build_evaluation_dataset(ct_spec, 256, build_samplers(None), seed=0)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Two different tiny models saved as plain official-layout weights."""
    folder = tmp_path_factory.mktemp("weights")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(save_sam(build_sam("tiny"), folder / f"tiny_{seed}.pth"))
    return paths


def test_every_object_gets_each_prompt_type(dataset):
    sample = dataset[0]
    n = len(dataset.base[0]["masks"])
    types = sample["prompt_types"].tolist()
    assert types == [PROMPT_ONE_POINT] * n + [PROMPT_POINTS] * n + [PROMPT_BOX] * n
    assert sample["masks"].shape[0] == 3 * n
    assert sample["object_areas"].shape == (3 * n,)
    for i, mask in enumerate(sample["masks"].numpy()):
        coords = sample["point_coords"][i].numpy()
        labels = sample["point_labels"][i].numpy()
        x, y = coords[:, 0].astype(int), coords[:, 1].astype(int)
        if types[i] == PROMPT_ONE_POINT:
            assert labels.tolist() == [1, -1, -1, -1]
            assert mask[y[0], x[0]]
        elif types[i] == PROMPT_POINTS:  # 3 positives inside, 1 negative outside
            assert labels.tolist() == [1, 1, 1, 0]
            assert mask[y[:3], x[:3]].all() and not mask[y[3], x[3]]
        else:  # the tight box: noise is off by default
            assert labels[:2].tolist() == [2, 3]
            np.testing.assert_array_equal(coords[:2].reshape(4), tight_box(mask))


def test_prompts_are_the_same_on_every_run(ct_spec, dataset):
    again = build_evaluation_dataset(ct_spec, 256, build_samplers(None), seed=0)
    other_seed = build_evaluation_dataset(ct_spec, 256, build_samplers(None), seed=1)
    for i in range(len(dataset)):
        torch.testing.assert_close(dataset[i]["point_coords"], again[i]["point_coords"])
    assert not torch.equal(dataset[0]["point_coords"], other_seed[0]["point_coords"])


def test_metrics_agree_with_the_predictor_on_the_same_prompts(weights, ct_spec, dataset):
    """Per prompt type, mIoU and the IoU head's error equal a hand-run of the predictor
    (input frame, best of three masks by predicted IoU, each prompt in the official layout)."""
    summary = evaluate_checkpoint(weights[0], ct_spec, clicks=[], max_images=3, trainer_options=CPU)
    predictor = SamPredictor(load_sam(weights[0]))
    ious: dict[int, list[float]] = {PROMPT_ONE_POINT: [], PROMPT_POINTS: [], PROMPT_BOX: []}
    head_errors = []
    for index in range(3):
        sample = dataset[index]
        h, w = sample["input_size"].tolist()
        predictor.set_torch_image(sample["image"][None].float(), (h, w))
        # each prompt as a user gives it: real points (+ the box), no batch padding
        per_object = []
        for coords, labels in zip(sample["point_coords"], sample["point_labels"], strict=True):
            coords, labels = coords[labels != -1], labels[labels != -1]
            corner = (labels == 2) | (labels == 3)
            box = coords[corner].reshape(1, 4) if corner.any() else None
            points = (
                (coords[~corner][None], labels[~corner][None]) if (~corner).any() else (None,) * 2
            )
            per_object.append(predictor.predict_torch(*points, boxes=box, multimask_output=True))
        masks = torch.cat([m for m, _, _ in per_object])
        scores = torch.cat([s for _, s, _ in per_object])
        best = scores.argmax(dim=1)
        rows = torch.arange(len(best))
        chosen, gt = masks[rows, best], sample["masks"]
        inter = (chosen & gt).flatten(1).sum(1).float()
        union = (chosen | gt).flatten(1).sum(1).float()
        iou = inter / union
        head_errors += (scores[rows, best] - iou).abs().tolist()
        for kind, value in zip(sample["prompt_types"].tolist(), iou.tolist(), strict=True):
            ious[kind].append(value)
    metrics = summary.metrics
    assert metrics["miou/one_point"] == pytest.approx(np.mean(ious[PROMPT_ONE_POINT]), abs=1e-5)
    assert metrics["miou/points"] == pytest.approx(np.mean(ious[PROMPT_POINTS]), abs=1e-5)
    assert metrics["miou/box"] == pytest.approx(np.mean(ious[PROMPT_BOX]), abs=1e-5)
    assert metrics["iou_head_mae"] == pytest.approx(np.mean(head_errors), abs=1e-5)
    assert metrics["num_objects"] == len(ious[PROMPT_BOX])
    assert metrics["num_prompts"] == 3 * len(ious[PROMPT_BOX])


def test_every_bucket_is_reported(weights, ct_spec, dataset):
    metrics = evaluate_checkpoint(weights[0], ct_spec, max_images=1, trainer_options=CPU).metrics
    for key in ("miou", "dice", "miou/one_point", "miou/points", "miou/box", "iou_head_mae"):
        assert 0.0 <= metrics[key] <= 1.0
    for clicks in (1, 3, 5):
        assert 0.0 <= metrics[f"miou/click_{clicks}"] <= 1.0
    # the size buckets are those of the first image's objects (COCO: 32^2, 96^2 px)
    areas = dataset.base[0]["object_areas"].tolist()
    names = {"small" if a < 32**2 else "medium" if a < 96**2 else "large" for a in areas}
    assert {k for k in metrics if k.split("/")[-1] in SIZES and k.startswith("miou")} == {
        f"miou/{name}" for name in names
    }


def test_two_checkpoints_give_a_b_and_the_difference():
    a = CheckpointSummary("a.pth", "weights", "vit_b", 1024, {"miou": 0.5, "num_objects": 10})
    b = CheckpointSummary("b.ckpt", "lightning", "vit_b", 1024, {"miou": 0.625, "num_objects": 10})
    report = build_report([a, b], {"split": "val"})
    assert report["difference_b_minus_a"] == {"miou": 0.125, "num_objects": 0}
    assert [c["kind"] for c in report["checkpoints"]] == ["weights", "lightning"]
    lines = format_table([a, b]).splitlines()
    assert lines[0] == "A: a.pth (weights, vit_b, 1024 px)"
    assert lines[1] == "B: b.ckpt (lightning, vit_b, 1024 px)"
    rows = {line.split()[0]: line.split()[1:] for line in lines if line[:1].isalpha()}
    assert rows["metric"] == ["A", "B", "B-A"]
    assert rows["miou"] == ["0.5000", "0.6250", "+0.1250"]
    assert rows["num_objects"] == ["10", "10", "+0"]


def test_lightning_checkpoint_is_evaluated_at_its_training_size(ct_spec, tmp_path):
    """The input size comes from the checkpoint's saved hyper-parameters (128 px here)."""
    path = save_lightning_checkpoint(tmp_path / "run.ckpt", make_tuner(image_size=128))
    summary = describe_checkpoint(path)
    assert (summary.kind, summary.variant, summary.image_size) == ("lightning", "tiny", 128)
    result = evaluate_checkpoint(path, ct_spec, max_images=1, clicks=[1], trainer_options=CPU)
    assert result.image_size == 128 and "miou/click_1" in result.metrics


def test_checkpoint_of_the_wrong_kind_is_a_clear_error(ct_spec, tmp_path):
    path = tmp_path / "optimizer_only.pth"
    torch.save({"state": {}, "param_groups": [{"lr": torch.tensor(0.1)}]}, path)
    with pytest.raises(CheckpointError, match=r"optimizer_only\.pth"):
        evaluate_checkpoint(path, ct_spec, trainer_options=CPU)


def test_prompt_types_can_be_dropped_but_not_all():
    samplers = build_samplers({**DEFAULT_PROMPTS, "points": None})
    assert list(samplers) == ["one_point", "box"]
    with pytest.raises(ValueError, match="every prompt type is disabled"):
        build_samplers({"one_point": None})
    with pytest.raises(ValueError, match=r"prompts\.box: .*num_boxes"):
        build_samplers({"box": {"num_boxes": 2}})

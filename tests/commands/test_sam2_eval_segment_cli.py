"""`segment` and `eval mode=instance` on Meta's SAM 2 checkpoint: the masks are the ones
Meta's `SAM2AutomaticMaskGenerator` gives with the same settings, and left-out thresholds are
that generator's defaults."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from reference_sam2 import import_sam2, save_meta_tiny

from samft.__main__ import main
from samft.model.sam2.image_encoder import feature_sizes
from samft.model.transforms import SQUARE_RESIZE

IMAGE = "4d4f254f3b8b4408.png"  # dsb-nuclei val, 320 x 256
GRID = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def meta_file(tmp_path_factory):
    """(Meta's tiny SAM 2 saved as Meta ships checkpoints, that model, Meta's package)."""
    meta = import_sam2()
    path = tmp_path_factory.mktemp("meta") / "sam2_tiny.pt"
    return path, save_meta_tiny(path, seed=7), meta


def meta_records(meta, ref, image: np.ndarray, **settings) -> list[dict]:
    generator = meta.automatic_mask_generator.SAM2AutomaticMaskGenerator(ref, **settings)
    generator.predictor._bb_feat_sizes = feature_sizes(256)  # Meta assumes 1024 px
    return generator.generate(image)


def _key(record: dict) -> tuple:
    return (tuple(int(v) for v in record["bbox"]), int(record["area"]))


def test_segment_a_meta_sam2_checkpoint(meta_file, shared_data, tmp_path):
    path, ref, meta = meta_file
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(shared_data / "dsb-nuclei" / "val" / "images" / IMAGE, photos / IMAGE)
    overrides = [f"checkpoint={path}", f"input={photos}", "device=cpu", "overlay=false"]

    main(["samft", "segment", *overrides, "output=defaults", "points_per_side=2"])
    report = json.loads((tmp_path / "defaults" / "segments.json").read_text())
    settings = report["settings"]
    assert (settings["pred_iou_thresh"], settings["stability_score_thresh"]) == (0.8, 0.95)
    assert report["thresholds_source"]["pred_iou_thresh"] == "Meta's default"

    every = {**GRID, "box_nms_thresh": 1.0}  # random weights: NMS leaves only a few
    main(["samft", "segment", *overrides, "output=out", *(f"{k}={v}" for k, v in every.items())])
    written = json.loads((tmp_path / "out" / IMAGE.removesuffix(".png") / "masks.json").read_text())
    image = np.array(Image.open(photos / IMAGE).convert("RGB"))
    want = meta_records(meta, ref, image, **every)
    assert len(want) > 40
    assert sorted(map(_key, written["masks"])) == sorted(map(_key, want))
    iou = {_key(r): r["predicted_iou"] for r in want}
    for record in written["masks"]:
        assert record["predicted_iou"] == pytest.approx(iou[_key(record)], abs=1e-4)


def test_min_mask_region_area_is_refused_for_sam2(meta_file, tmp_path, capsys):
    """Meta's SAM 2 generator cleans small regions in another way (on low-res logits)."""
    path, _, _ = meta_file
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    with pytest.raises(SystemExit) as raised:
        main(["samft", "segment", f"checkpoint={path}", f"input={image}", "output=out",
              "device=cpu", "min_mask_region_area=10"])  # fmt: skip
    assert raised.value.code == 2
    assert "min_mask_region_area=10 with a SAM 2 model" in capsys.readouterr().err


def test_eval_instance_on_a_meta_sam2_checkpoint(meta_file, shared_data, tmp_path):
    """`eval mode=instance` scores the masks Meta's generator gives (one image)."""
    path, ref, meta = meta_file
    val = shared_data / "dsb-nuclei"
    data = [f"data.val.annotations={val / 'val.json'}", f"data.val.images={val / 'val' / 'images'}"]
    grid = [f"instance.{key}={value}" for key, value in GRID.items()]
    main(["samft", "eval", "mode=instance", f"checkpoint={path}", "trainer=cpu", *data,
          "max_images=1", "output=eval.json", *grid])  # fmt: skip
    report = json.loads((tmp_path / "eval.json").read_text())
    (entry,) = report["checkpoints"]
    first = json.loads((val / "val.json").read_text())["images"][0]["file_name"]
    image = np.array(Image.open(val / "val" / "images" / first).convert("RGB"))
    want = meta_records(meta, ref, image, **GRID)
    assert entry["metrics"]["n_masks"] == len(want) > 0
    assert entry["variant"] == "sam2_tiny"


def test_eval_prompted_scores_what_metas_predictor_answers(meta_file, shared_data):
    """`eval mode=prompted`'s first-prompt IoU on a SAM 2 checkpoint is the IoU of the mask
    Meta's `SAM2ImagePredictor` answers to the same prompts on the same (input-frame) image:
    a box and one click per object."""
    from samft.evaluate.prompted import (
        build_evaluation_dataset,
        build_samplers,
        evaluate_checkpoint,
    )

    path, ref, meta = meta_file
    val = shared_data / "dsb-nuclei"
    spec = {"format": "coco", "annotations": str(val / "val.json"),
            "images": str(val / "val" / "images")}  # fmt: skip
    types = {"one_point": {"point_prob": 1.0, "box_prob": 0.0, "num_points": [1, 1]},
             "box": {"point_prob": 0.0, "box_prob": 1.0, "box_noise_std": 0.0}}  # fmt: skip
    limits = {"max_objects_per_image": 4, "max_images": 1}
    summary = evaluate_checkpoint(
        path, spec, prompts=types, clicks=[], multimask_output="auto", seed=0,
        trainer_options={"accelerator": "cpu"}, **limits,
    )  # fmt: skip
    dataset = build_evaluation_dataset(
        spec, 256, build_samplers(types), seed=0, resize_interpolation=SQUARE_RESIZE, **limits
    )
    sample = dataset[0]
    predictor = meta.sam2_image_predictor.SAM2ImagePredictor(ref, disable_torch_jit=True)
    predictor._bb_feat_sizes = feature_sizes(256)
    predictor.set_image(sample["image"].permute(1, 2, 0).numpy())  # the 256 x 256 input frame
    ious = {0: [], 2: []}  # prompt type -> IoU of each object
    prompts = zip(
        sample["point_coords"],
        sample["point_labels"],
        sample["prompt_types"],
        sample["masks"],
        strict=True,
    )
    for coords, labels, kind, truth in prompts:
        keep = labels >= 0
        lone_click = int(kind) == 0  # multimask_output=auto: the best of 3 for one click
        masks, scores, _ = predictor._predict(
            coords[keep][None].float(), labels[keep][None].int(), multimask_output=lone_click
        )
        mask = masks[0, int(scores[0].argmax())].bool()
        ious[int(kind)].append(float((mask & truth).sum() / (mask | truth).sum()))
    assert summary.metrics["miou/one_point"] == pytest.approx(np.mean(ious[0]), rel=1e-4)
    assert summary.metrics["miou/box"] == pytest.approx(np.mean(ious[2]), rel=1e-4)

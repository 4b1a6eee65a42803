"""`python -m samft predict` on Meta's SAM 2 checkpoint: the masks it writes are the ones
Meta's `SAM2ImagePredictor` gives for the same prompts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from reference_sam2 import import_sam2, save_meta_tiny

from samft.__main__ import main
from samft.model.sam2.image_encoder import feature_sizes

IMAGE = "4d4f254f3b8b4408.png"  # dsb-nuclei val, 320 x 256
PROMPTS = [
    {"name": "click", "points": [[150, 120]], "labels": [1]},
    {"name": "box", "box": [120, 90, 190, 150]},
]


@pytest.mark.usefixtures("one_thread")
def test_predict_on_a_meta_sam2_checkpoint(shared_data, tmp_path, monkeypatch):
    meta = import_sam2()
    checkpoint = tmp_path / "sam2_tiny.pt"
    ref = save_meta_tiny(checkpoint, seed=7)  # as Meta ships SAM 2
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(shared_data / "dsb-nuclei" / "val" / "images" / IMAGE, photos / IMAGE)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({IMAGE: PROMPTS}))

    monkeypatch.chdir(tmp_path)
    main(["samft", "predict", f"checkpoint={checkpoint}", f"input={photos}"]
         + [f"prompts={prompts}", "output=out", "device=cpu"])  # fmt: skip

    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["image_size"] == 256
    entries = scores["images"][0]["prompts"]
    image = np.array(Image.open(photos / IMAGE).convert("RGB"))
    predictor = meta.sam2_image_predictor.SAM2ImagePredictor(ref, disable_torch_jit=True)
    predictor._bb_feat_sizes = feature_sizes(256)
    predictor.set_image(image)
    for prompt, entry in zip(PROMPTS, entries, strict=True):
        lone_click = "box" not in prompt  # multimask_output=auto: 3 candidates for it
        assert entry["multimask_output"] is lone_click
        masks, iou, _ = predictor.predict(
            point_coords=np.array(prompt["points"], float) if lone_click else None,
            point_labels=np.array(prompt["labels"]) if lone_click else None,
            box=None if lone_click else np.array(prompt["box"], float),
            multimask_output=lone_click,
        )
        best = int(np.argmax(iou))
        np.testing.assert_allclose(entry["scores"], iou, atol=1e-4, rtol=0)
        written = np.asarray(Image.open(tmp_path / "out" / entry["mask"])) > 0
        assert written.shape == image.shape[:2] and written.any()
        assert (written != masks[best].astype(bool)).mean() < 1e-4

"""samft's predictor on a SAM 2 checkpoint against Meta's `SAM2ImagePredictor`.

Meta's model (the tiny config of `reference_sam2`, random weights) is saved as Meta ships
its checkpoints (`{"model": state_dict}`); samft loads that file by path
(`load_sam`) and answers the same prompts on a real image as Meta's predictor on Meta's
model: masks (logits and booleans), IoU and the clamped low-res logits, within 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reference_sam2 import build_tiny_meta, import_sam2, save_meta_tiny
from torch import nn

from samft.infer.predictor import SamPredictor
from samft.model.sam2 import Sam2
from samft.model.sam2.image_encoder import feature_sizes
from samft.weights import load_sam

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-4
IMAGE = "4d4f254f3b8b4408"  # dsb-nuclei val: 256 x 320 (not square), 15 nuclei


@pytest.fixture(scope="module")
def meta():
    return import_sam2()


@pytest.fixture(scope="module")
def meta_file(meta, tmp_path_factory) -> tuple[Path, nn.Module]:
    """(a Meta-layout checkpoint of Meta's tiny SAM 2.1-style model, that model)."""
    path = tmp_path_factory.mktemp("meta") / "sam2_tiny.pt"
    return path, save_meta_tiny(path, seed=3)


@pytest.fixture(scope="module")
def image(shared_data: Path) -> np.ndarray:
    path = shared_data / "dsb-nuclei" / "val" / "images" / f"{IMAGE}.png"
    return np.array(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def predictors(meta, meta_file, image) -> tuple[SamPredictor, object]:
    path, ref = meta_file
    ours = SamPredictor(load_sam(path))
    theirs = meta.sam2_image_predictor.SAM2ImagePredictor(ref, disable_torch_jit=True)
    theirs._bb_feat_sizes = feature_sizes(ours.model.image_size)  # Meta hard-codes 1024 px
    ours.set_image(image)
    theirs.set_image(image)
    return ours, theirs


def test_the_meta_file_loads_as_sam2_tiny_with_its_video_parts(meta_file):
    path, ref = meta_file
    model = load_sam(path)
    assert isinstance(model, Sam2) and model.image_size == 256
    want = ref.state_dict()
    got = model.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], v) and got[k].dtype == v.dtype for k, v in want.items())
    assert len(model.video_parts) > 0


def test_features_match(predictors, image):
    ours, theirs = predictors
    assert ours.original_size == tuple(theirs._orig_hw[0]) == image.shape[:2]
    assert ours.input_size == (256, 256) and ours.transform is None
    torch.testing.assert_close(
        ours.get_image_embedding(), theirs.get_image_embedding(), atol=ATOL, rtol=0
    )
    for got, want in zip(ours.features.high_res, theirs._features["high_res_feats"], strict=True):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


# original frame (x, y) on the 320 x 256 image: a nucleus-sized region and points around it
POINT = np.array([[150.0, 120.0]])
PROMPTS = {
    "point": {"point_coords": POINT, "point_labels": np.array([1])},
    "points+-": {
        "point_coords": np.array([[150.0, 120.0], [171.5, 97.25]]),
        "point_labels": np.array([1, 0]),
    },
    "box": {"box": np.array([120.0, 90.0, 190.0, 150.0])},
    "box+point": {
        "box": np.array([120.0, 90.0, 190.0, 150.0]),
        "point_coords": np.array([[140.0, 130.0]]),
        "point_labels": np.array([0]),
    },
}


def _assert_same(got, want, logits: bool) -> float:
    """Masks, IoU and low-res logits equal Meta's; the largest difference."""
    masks, iou, low_res = got
    want_masks, want_iou, want_low_res = want
    assert masks.shape == want_masks.shape
    np.testing.assert_allclose(low_res, want_low_res, atol=ATOL, rtol=0)
    np.testing.assert_allclose(iou, want_iou, atol=ATOL, rtol=0)
    assert np.abs(low_res).max() <= 32.0  # Meta's clamp
    if logits:
        np.testing.assert_allclose(masks, want_masks, atol=ATOL, rtol=0)
        return float(np.abs(masks - want_masks).max())
    assert masks.dtype == bool  # Meta gives the same values as float 0 / 1
    assert (masks != want_masks.astype(bool)).mean() < 1e-4
    return float(np.abs(low_res - want_low_res).max())


@pytest.mark.parametrize("kind", sorted(PROMPTS))
@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("logits", [True, False])
def test_predict_matches_meta(predictors, image, kind, multimask, logits):
    ours, theirs = predictors
    kwargs = dict(PROMPTS[kind], multimask_output=multimask, return_logits=logits)
    got = ours.predict(**kwargs)
    diff = _assert_same(got, theirs.predict(**kwargs), logits)
    print(f"{kind} multimask={multimask} logits={logits}: max abs diff {diff:.2e}")
    assert got[0].shape == ((3 if multimask else 1), *image.shape[:2])


@pytest.mark.parametrize("kind", ["point", "box+point"])
def test_mask_input_round_trip_matches_meta(predictors, kind):
    """The clamped low-res answer fed back as `mask_input`, as an interactive tool does."""
    ours, theirs = predictors
    _, scores, low_res = theirs.predict(**PROMPTS["point"], multimask_output=True)
    best = int(np.argmax(scores))
    kwargs = dict(
        PROMPTS[kind],
        mask_input=low_res[best : best + 1],
        multimask_output=False,
        return_logits=True,
    )
    _assert_same(ours.predict(**kwargs), theirs.predict(**kwargs), logits=True)


def test_set_torch_image_takes_the_square_input_frame(predictors, image):
    ours, _ = predictors
    other = SamPredictor(ours.model)
    with pytest.raises(ValueError, match=r"1 x 3 x 256 x 256, got \(1, 3, 200, 256\)"):
        other.set_torch_image(torch.zeros(1, 3, 200, 256), image.shape[:2])
    square = torch.nn.functional.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
        (256, 256),
        mode="bilinear",
        antialias=True,
    )
    other.set_torch_image(square * 255, image.shape[:2])
    torch.testing.assert_close(
        other.get_image_embedding(), ours.get_image_embedding(), atol=ATOL, rtol=0
    )


def test_low_res_logits_are_clamped_as_meta_does(meta, meta_file, image, tmp_path):
    """Logits beyond +-32 (a decoder scaled up): the low-res answer is clamped, the masks
    are not, in both predictors."""
    _, ref = meta_file
    loud = build_tiny_meta()
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    for key in state:
        if key.startswith("sam_mask_decoder.output_hypernetworks_mlps."):
            state[key] = state[key] * 40
    loud.load_state_dict(state, strict=True)
    path = tmp_path / "loud.pt"
    torch.save({"model": state}, path)
    ours = SamPredictor(load_sam(path))
    theirs = meta.sam2_image_predictor.SAM2ImagePredictor(loud, disable_torch_jit=True)
    theirs._bb_feat_sizes = feature_sizes(256)
    ours.set_image(image)
    theirs.set_image(image)
    kwargs = dict(PROMPTS["box"], multimask_output=True, return_logits=True)
    got, want = ours.predict(**kwargs), theirs.predict(**kwargs)
    assert np.abs(got[0]).max() > 32 and np.abs(got[2]).max() == 32
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=ATOL * np.abs(w).max(), rtol=0)

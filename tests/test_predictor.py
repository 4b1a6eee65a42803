from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from reference import build_official

from samft.infer.predictor import SamPredictor
from samft.model.registry import build_sam

ATOL = 1e-4


def _perturbed_tiny(seed: int = 0):
    """A tiny samft Sam whose every weight (pos-embeds and rel-pos included) is non-trivial."""
    torch.manual_seed(seed)
    sam = build_sam("tiny")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in sam.state_dict().values():
            tensor.add_(torch.randn(tensor.shape, generator=gen) * 0.05)
    return sam


@pytest.fixture(scope="module")
def image(coco_mini) -> np.ndarray:
    """A real 640 x 428 (w x h) photo: not square, so padding and resizing both matter."""
    path = sorted((coco_mini / "images").glob("*.jpg"))[0]
    return np.array(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def predictors(official, image):
    ours_model = _perturbed_tiny()
    ref_model = build_official(official.modeling, "tiny")
    ref_model.load_state_dict(ours_model.state_dict())
    ours, ref = SamPredictor(ours_model), official.SamPredictor(ref_model)
    ours.set_image(image)
    ref.set_image(image)
    return ours, ref


def _assert_same(got, want, logits: bool):
    masks, iou, low_res = got
    want_masks, want_iou, want_low_res = want
    assert masks.shape == want_masks.shape and masks.dtype == want_masks.dtype
    np.testing.assert_allclose(low_res, want_low_res, atol=ATOL, rtol=0)
    np.testing.assert_allclose(iou, want_iou, atol=ATOL, rtol=0)
    if logits:
        np.testing.assert_allclose(masks, want_masks, atol=ATOL, rtol=0)
    else:
        assert (masks != want_masks).mean() < 1e-4


def test_embedding_and_sizes_match_official(predictors, image):
    ours, ref = predictors
    assert ours.original_size == tuple(ref.original_size) == image.shape[:2]
    assert ours.input_size == tuple(ref.input_size)
    torch.testing.assert_close(
        ours.get_image_embedding(), ref.get_image_embedding(), atol=ATOL, rtol=0
    )


PROMPTS = {
    "point": dict(point_coords=np.array([[320, 200]]), point_labels=np.array([1])),
    "points": dict(point_coords=np.array([[320, 200], [100, 50]]), point_labels=np.array([1, 0])),
    "box": dict(box=np.array([50, 40, 500, 400])),
    "point+box": dict(
        point_coords=np.array([[300, 210]]),
        point_labels=np.array([1]),
        box=np.array([50, 40, 500, 400]),
    ),
}


@pytest.mark.parametrize("kind", sorted(PROMPTS))
@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("logits", [True, False])
def test_predict_matches_official(predictors, image, kind, multimask, logits):
    ours, ref = predictors
    kwargs = dict(PROMPTS[kind], multimask_output=multimask, return_logits=logits)
    got = ours.predict(**kwargs)
    _assert_same(got, ref.predict(**kwargs), logits)
    assert got[0].shape == ((3 if multimask else 1), *image.shape[:2])


def test_mask_input_round_trip_matches_official(predictors):
    ours, ref = predictors
    _, _, low_res = ours.predict(**PROMPTS["point"], multimask_output=False)
    kwargs = dict(PROMPTS["points"], mask_input=low_res, multimask_output=False, return_logits=True)
    _assert_same(ours.predict(**kwargs), ref.predict(**kwargs), logits=True)


def test_predict_torch_batched_boxes_match_official(predictors):
    ours, ref = predictors
    boxes = torch.tensor([[50.0, 40.0, 500.0, 400.0], [0.0, 0.0, 200.0, 300.0]])
    boxes = ours.transform.apply_boxes_torch(boxes, ours.original_size)
    got = ours.predict_torch(None, None, boxes=boxes, return_logits=True)
    want = ref.predict_torch(None, None, boxes=boxes, return_logits=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=0)
    assert got[0].shape == (2, 3, *ours.original_size)


def test_bgr_input_is_flipped(predictors, image):
    ours, _ = predictors
    rgb = ours.get_image_embedding().clone()
    other = SamPredictor(ours.model)
    other.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    torch.testing.assert_close(other.get_image_embedding(), rgb)


def test_errors_are_explained(predictors, image):
    fresh = SamPredictor(predictors[0].model)
    with pytest.raises(RuntimeError, match="set an image"):
        fresh.predict(**PROMPTS["point"])
    with pytest.raises(ValueError, match="'RGB' or 'BGR', got 'RGBA'"):
        fresh.set_image(image, image_format="RGBA")
    fresh.set_image(image)
    with pytest.raises(ValueError, match="point_labels must be given"):
        fresh.predict(point_coords=np.array([[1, 2]]))
    with pytest.raises(ValueError, match=r"long side 256, got \(1, 3, 100, 100\)"):
        fresh.set_torch_image(torch.zeros(1, 3, 100, 100), (100, 100))
    fresh.reset_image()
    assert fresh.features is None and not fresh.is_image_set

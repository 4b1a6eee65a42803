"""ONNX export: onnxruntime agrees with samft's PyTorch predictor (tiny variant, real images)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from samft.data.images import read_rgb
from samft.infer.predictor import SamPredictor
from samft.model.registry import build_sam
from samft.weights.export import export_checkpoint
from samft.weights.onnx import DECODER_INPUTS, export_onnx

ATOL = 1e-3


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(3)
    return build_sam("tiny")


@pytest.fixture(scope="module")
def sessions(sam, tmp_path_factory):
    paths = export_onnx(sam, tmp_path_factory.mktemp("onnx") / "tiny")
    return {name: ort.InferenceSession(str(path)) for name, path in paths.items()}


@pytest.fixture(scope="module", params=["landscape", "portrait"])
def image(request, coco_mini) -> np.ndarray:
    """A landscape and a portrait COCO photo, so both input axes vary at run time."""
    for path in sorted((coco_mini / "images").glob("*.jpg")):
        picture = read_rgb(path)
        height, width = picture.shape[:2]
        if (height > width) == (request.param == "portrait"):
            return picture
    pytest.fail(f"coco-mini has no {request.param} image")


@pytest.fixture()
def predictor(sam, image) -> SamPredictor:
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    return predictor


def run_decoder(session, predictor, points, labels, mask_input=None):
    """The demo's call: points in the input frame with the padding point appended."""
    coords = predictor.transform.apply_coords(np.asarray(points, float), predictor.original_size)
    coords = np.concatenate([coords, [[0.0, 0.0]]])[None].astype(np.float32)
    labels = np.concatenate([labels, [-1]])[None].astype(np.float32)
    low = 4 * predictor.features.shape[-1]
    feeds = {
        "image_embeddings": predictor.features.numpy(),
        "point_coords": coords,
        "point_labels": labels,
        "mask_input": np.zeros((1, 1, low, low), np.float32) if mask_input is None else mask_input,
        "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
        "orig_im_size": np.array(predictor.original_size, np.float32),
    }
    assert list(feeds) == list(DECODER_INPUTS)
    return session.run(None, feeds)


def expected(predictor, points, labels, mask_input=None):
    """What samft's predictor gives: best of 3 for one click, the single mask otherwise."""
    multimask = len(points) == 1
    masks, scores, low_res = predictor.predict(
        np.asarray(points, float),
        np.asarray(labels),
        mask_input=None if mask_input is None else mask_input[0],
        multimask_output=multimask,
        return_logits=True,
    )
    best = int(np.argmax(scores))
    return masks[best], scores[best], low_res[best]


def relative_point(image, fx, fy):
    return [image.shape[1] * fx, image.shape[0] * fy]


@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "mask_input"])
@pytest.mark.parametrize("num_points", [1, 3])
def test_decoder_matches_pytorch(sessions, predictor, image, num_points, with_mask):
    points = [relative_point(image, 0.45, 0.55), relative_point(image, 0.3, 0.4)]
    points.append(relative_point(image, 0.9, 0.1))
    points, labels = points[:num_points], np.array([1, 1, 0][:num_points])
    mask_input = None
    if with_mask:  # feed back a previous low-res answer, as an interactive front end does
        _, _, previous = expected(predictor, points[:1], labels[:1])
        mask_input = previous[None, None].astype(np.float32)

    masks, scores, low_res = run_decoder(sessions["decoder"], predictor, points, labels, mask_input)
    want_mask, want_score, want_low = expected(predictor, points, labels, mask_input)
    assert masks.shape == (1, 1, *image.shape[:2])
    np.testing.assert_allclose(masks[0, 0], want_mask, atol=ATOL, rtol=0)
    np.testing.assert_allclose(scores[0, 0], want_score, atol=ATOL, rtol=0)
    np.testing.assert_allclose(low_res[0, 0], want_low, atol=ATOL, rtol=0)


def test_encoder_matches_pytorch(sessions, predictor, image):
    resized = predictor.transform.apply_image(image)
    x = resized.transpose(2, 0, 1)[None].astype(np.float32)
    (embedding,) = sessions["encoder"].run(None, {"image": x})
    np.testing.assert_allclose(embedding, predictor.features.numpy(), atol=ATOL, rtol=0)


def test_onnx_export_through_export_checkpoint_shares_the_sidecar(sam, tmp_path):
    """`format=onnx` after the official export to the same stem keeps one sidecar for all."""
    from samft.weights import save_sam

    source = save_sam(sam, tmp_path / "weights.pth")
    export_checkpoint(source, tmp_path / "out" / "model")
    written = export_checkpoint(source, tmp_path / "out" / "model", format="onnx")
    assert written["encoder"].name == "model.encoder.onnx"
    assert written["decoder"].name == "model.decoder.onnx"
    sidecar = json.loads(written["sidecar"].read_text())
    assert set(sidecar["files"]) == {"pth", "safetensors", "encoder", "decoder"}
    assert sidecar["onnx"]["opset"] == 17
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "model.decoder.onnx",
        "model.encoder.onnx",
        "model.json",
        "model.pth",
        "model.safetensors",
    ]

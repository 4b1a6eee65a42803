"""`AutomaticMaskGenerator` on a SAM 2 model against Meta's `SAM2AutomaticMaskGenerator`.

Meta's model (the tiny config of `reference_sam2`, random weights) and samft's `sam2_tiny`
hold the same state dict; both generators run on a real DSB 2018 image. Random weights
answer every grid point with nearly the same mask, which NMS would collapse to a handful:
the record-for-record comparison turns box NMS off (a threshold of 1: the order by score
stays) and opens the filters, so every mask of every point is compared. (Crops add nothing
here: random masks are large and every crop's touch its inner edges; the crop steps are
shared with SAM, tested against Meta's SAM generator in test_automatic.py.) Meta's
defaults are compared setting by setting. Meta's generator calls torchvision's
`batched_nms`, absent here; it gets samft's (the stand-in of `reference_sam2`).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from PIL import Image
from reference_sam2 import import_sam2, perturb_, sam2_hydra, same_weights_tiny
from torch import nn

from samft.infer.automatic import AutomaticMaskGenerator
from samft.infer.record_masks import segmentation_mask
from samft.model.registry import build_sam
from samft.model.sam2 import Sam2
from samft.model.sam2.image_encoder import feature_sizes

pytestmark = pytest.mark.usefixtures("one_thread")

NUCLEI = "4d4f254f3b8b4408"  # dsb-nuclei val: 256 x 320 (not square)
COCO = "000000000071.jpg"  # coco-mini, a photo
SETTINGS = ("points_per_batch", "pred_iou_thresh", "stability_score_thresh",
            "stability_score_offset", "box_nms_thresh", "crop_n_layers", "crop_nms_thresh",
            "crop_overlap_ratio", "min_mask_region_area", "output_mode")  # fmt: skip


@pytest.fixture(scope="module")
def meta():
    return import_sam2()


@pytest.fixture(scope="module")
def tiny_pair(meta) -> tuple[Sam2, nn.Module]:
    """(samft sam2_tiny, Meta's SAM2Base of the same architecture), same random weights."""
    return same_weights_tiny(seed=3)


def _image(path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def meta_generator(meta, ref: nn.Module, image_size: int, **settings):
    generator = meta.automatic_mask_generator.SAM2AutomaticMaskGenerator(ref, **settings)
    generator.predictor._bb_feat_sizes = feature_sizes(image_size)  # Meta assumes 1024 px
    return generator


def assert_same_records(ours: list[dict], theirs: list[dict], pixels: int = 0) -> None:
    """Record for record, in order: masks that differ in at most `pixels` pixels (and the
    same box, area and crop where they are equal); scores within 1e-4; the same point
    (Meta keeps it in float32)."""
    assert len(ours) == len(theirs)
    for mine, want in zip(ours, theirs, strict=True):
        assert set(mine) == set(want)
        differ = np.count_nonzero(segmentation_mask(mine["segmentation"]) != want["segmentation"])
        assert differ <= pixels
        if differ == 0:
            assert (mine["bbox"], mine["area"], mine["crop_box"]) == (
                want["bbox"], want["area"], want["crop_box"],
            )  # fmt: skip
        assert mine["predicted_iou"] == pytest.approx(want["predicted_iou"], abs=1e-4)
        assert mine["stability_score"] == pytest.approx(want["stability_score"], abs=1e-4)
        np.testing.assert_allclose(mine["point_coords"], want["point_coords"], atol=1e-4)


def test_defaults_are_those_of_metas_sam2_generator(meta, tiny_pair, official):
    """Left out, every setting is what Meta's SAM 2 generator uses (pred_iou_thresh 0.8,
    not SAM's 0.88), and the grid is the same; SAM's own generator keeps SAM's."""
    ours_model, ref = tiny_pair
    ours = AutomaticMaskGenerator(ours_model)
    theirs = meta_generator(meta, ref, 256)
    for key in SETTINGS:
        assert getattr(ours, key) == getattr(theirs, key), key
    assert ours.pred_iou_thresh == 0.8
    np.testing.assert_array_equal(ours.point_grids[0], theirs.point_grids[0])
    # what samft always does: Meta's mask threshold, three answers per point, no m2m pass
    assert ours_model.mask_threshold == theirs.mask_threshold
    assert theirs.multimask_output and not theirs.use_m2m

    sam1 = AutomaticMaskGenerator(build_sam("tiny"))
    signature = inspect.signature(official.automatic_mask_generator.SamAutomaticMaskGenerator)
    for key in ("pred_iou_thresh", "stability_score_thresh"):
        assert getattr(sam1, key) == signature.parameters[key].default


def test_records_match_meta_mask_for_mask(meta, tiny_pair, shared_data):
    """8 x 8 points, 3 masks each: every mask the same, in the same order."""
    ours_model, ref = tiny_pair
    image = _image(shared_data / "dsb-nuclei" / "val" / "images" / f"{NUCLEI}.png")
    settings = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                    box_nms_thresh=1.0)  # fmt: skip
    ours = AutomaticMaskGenerator(ours_model, output_mode="uncompressed_rle", **settings)
    theirs = meta_generator(meta, ref, 256, **settings).generate(image)
    assert len(theirs) == 8 * 8 * 3  # none touches the image's edge
    assert_same_records(ours.generate(image), theirs)


@pytest.mark.slow
def test_hiera_t_records_match_meta_on_a_photo(meta, shared_data):
    """The real `sam2.1_hiera_t` config at 1024 px, random weights, on a COCO photo, 8 x 8
    points: measured 187 of 192 masks equal, 5 differing in one pixel of 272,640 (logits at
    0 after 1024 px of float32 arithmetic), scores within 2e-7."""
    with sam2_hydra():
        ref = meta.build_sam.build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", device="cpu")
    perturb_(ref, seed=1, scale=0.02)
    ours = build_sam("sam2.1_hiera_t")
    ours.load_state_dict(ref.state_dict(), strict=True)
    image = _image(shared_data / "coco-mini" / "images" / COCO)
    settings = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                    box_nms_thresh=1.0)  # fmt: skip
    theirs = meta_generator(meta, ref, 1024, **settings).generate(image)
    assert len(theirs) > 100
    ours_records = AutomaticMaskGenerator(ours.eval(), **settings).generate(image)
    assert_same_records(ours_records, theirs, pixels=2)

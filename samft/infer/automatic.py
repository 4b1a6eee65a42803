"""Segment everything: prompt a SAM with a grid of points and keep the good, distinct masks.

The algorithm of the official `SamAutomaticMaskGenerator` (SAM) and
`SAM2AutomaticMaskGenerator` (SAM 2), with the same parameters and records, on any samft
`Sam` or `Sam2`. The two official generators differ in their default `pred_iou_thresh`
(0.88 and 0.8: each model's `automatic_thresholds`) and in how they move the grid's points
to the input frame (`transform_grid_points`); SAM 2's also offers refinement passes
(`use_m2m`, off by default) that samft does not, and cleans small regions
(`min_mask_region_area`) on the low-res logits with a CUDA extension, which samft refuses
(`automatic_region_cleanup`). The model's side of `samft.model.promptable` does the rest.
For each crop (the whole image, plus 2^i x 2^i overlapping crops per extra layer) the image
is encoded once; every grid point is a single positive click with
three (multimask) answers. Masks are kept when their predicted IoU is above
`pred_iou_thresh`, their stability score at least `stability_score_thresh`, and they do not
touch an inner crop edge; box NMS then removes duplicates within a crop, then across crops.
With `covered_thresh` < 1 (not in the official generator) masks mostly covered by masks the
IoU head scores higher are dropped last, so that each object keeps one mask.

Two stages, so that thresholds can be swept without running the model again:
`propose(image)` runs the model and returns every mask that passes the thresholds, before
NMS (`MaskCandidates`); `select(candidates, pred_iou_thresh, stability_score_thresh)`
filters them with thresholds at least as strict, runs NMS and returns the records.
`generate(image)` is both with the generator's own thresholds. The candidates, their
selection and the records live in `samft.infer.mask_candidates`.

Where the work goes: one encoder pass per crop (`SamPredictor.set_image`: the model's
`prepare_image`); the decoder's prompt-independent work on the crop is done once too (the
model's `prepare_decoder`), and the points of a call go through the decoder together on it
(`decode_prepared`: the crop's tokens are never repeated per prompt); the IoU filter runs on
the low-res outputs, so only the masks that pass it are brought to the crop's size
(`masks_to_original`), where the stability score is computed as the official generators
compute it (on the upscaled logits: on low-res logits it would differ); boxes, the edge
filter and RLEs are computed for all masks of a call at once. On the CPU the calls are
kept small enough to avoid page faults (`CPU_CALL_BYTES`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from samft.infer.heap import retained_heap
from samft.infer.mask_candidates import OUTPUT_MODES, MaskCandidates, select_masks, to_records
from samft.infer.mask_ops import (
    crop_boxes,
    layer_point_grids,
    mask_boxes,
    near_crop_edge,
    stability_score,
    uncrop_boxes,
    uncrop_masks,
    uncrop_points,
)
from samft.infer.predictor import SamPredictor
from samft.infer.rle import masks_to_rle
from samft.model.promptable import PromptableSam

# On the CPU, points per decoder call are also limited so that the decoder's largest
# per-call temporaries (the prompts' image tokens, points x C x h x w floats) stay below
# glibc's largest mmap threshold (32 MiB): bigger blocks are mapped afresh on every call,
# and faulting their pages in costs as much as a good part of the arithmetic at one thread;
# smaller ones are reused from call to call (`samft.infer.heap.retained_heap`). LiteMedSAM
# (4 MiB per point), one thread, 144 points, besides the encoder: 49-52 ms per point at 6
# points per call, 58 at 3, 76-82 at 8-16 (their tokens are mapped afresh).
CPU_CALL_BYTES = 24 * 2**20
CROP_OVERLAP_RATIO = 512 / 1500  # the official generator's default crop overlap


class AutomaticMaskGenerator:
    """Masks for a whole image from a point grid, like the official generator.

    Args:
        sam: any samft `Sam` or `Sam2` (e.g. from `samft.weights.load_sam`); its own
            `prepare_image` resizes and normalises the pixels.
        points_per_side: grid points along a side (the grid has n^2); None with point_grids.
        points_per_batch: points decoded per call (memory: points x mask size); on the CPU
            calls are smaller still when that saves page faults (see `CPU_CALL_BYTES`).
        pred_iou_thresh: keep masks whose predicted IoU is > this (0 disables; None: the
            model's official generator's, `sam.automatic_thresholds`: 0.88 SAM, 0.8 SAM 2).
        stability_score_thresh: keep masks whose stability score is >= this (0 disables;
            None: the official generator's, 0.95).
        stability_score_offset: logit offset of the stability score.
        box_nms_thresh: box IoU above which NMS drops duplicates within a crop.
        crop_n_layers: extra crop layers; layer i has 2^i x 2^i crops.
        crop_nms_thresh: box IoU above which NMS drops duplicates across crops (masks from
            smaller crops win).
        crop_overlap_ratio: crop overlap, as a fraction of the short image side, in layer 1.
        crop_n_points_downscale_factor: layer i uses points_per_side / factor^i points.
        point_grids: explicit `P x 2` grids in [0, 1], one per layer, instead of
            points_per_side.
        min_mask_region_area: if > 0, fill holes and drop islands smaller than this (pixels)
            in the kept masks, then re-run NMS.
        covered_thresh: drop a mask when more than this fraction of its area is covered by
            masks with a higher predicted IoU (`suppress_covered`; one mask per object, for
            label images and instance metrics); 1 disables it, as in the official generator.
        output_mode: "binary_mask" (`H x W` bool arrays), "uncompressed_rle" or "coco_rle".
    """

    def __init__(
        self,
        sam: PromptableSam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = CROP_OVERLAP_RATIO,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Sequence[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        covered_thresh: float = 1.0,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if points_per_side is not None:
            grids = layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            grids = [np.asarray(grid, dtype=np.float64) for grid in point_grids]
        if len(grids) < crop_n_layers + 1:
            raise ValueError(f"need {crop_n_layers + 1} point grids, one per crop layer")
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")
        if not 0.0 <= covered_thresh <= 1.0:
            raise ValueError(f"covered_thresh must be in [0, 1], got {covered_thresh}")
        if min_mask_region_area > 0 and not sam.automatic_region_cleanup:
            raise ValueError(
                f"min_mask_region_area={min_mask_region_area} with a SAM 2 model: Meta's SAM 2 "
                "generator fills holes and removes specks on the low-res masks (a CUDA "
                "extension), which samft does not reproduce; use min_mask_region_area=0"
            )
        self.predictor = SamPredictor(sam)
        self.point_grids = grids
        self.points_per_batch = int(points_per_batch)
        defaults = sam.automatic_thresholds
        if pred_iou_thresh is None:
            pred_iou_thresh = defaults["pred_iou_thresh"]
        if stability_score_thresh is None:
            stability_score_thresh = defaults["stability_score_thresh"]
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.box_nms_thresh = float(box_nms_thresh)
        self.crop_n_layers = int(crop_n_layers)
        self.crop_nms_thresh = float(crop_nms_thresh)
        self.crop_overlap_ratio = float(crop_overlap_ratio)
        self.min_mask_region_area = int(min_mask_region_area)
        self.output_mode = output_mode
        self.covered_thresh = float(covered_thresh)

    @property
    def model(self) -> PromptableSam:
        return self.predictor.model

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Mask records for an `H x W x 3` uint8 RGB image (see `select` for their fields)."""
        return self.select(self.propose(image))

    def points_per_call(self) -> int:
        """Points per decoder call: `points_per_batch`, capped on the CPU by `CPU_CALL_BYTES`."""
        sam = self.model
        if sam.device.type != "cpu":
            return self.points_per_batch
        h, w = sam.prompt_encoder.image_embedding_size
        channels = sam.mask_decoder.transformer_dim
        per_point = channels * h * w * sam.mask_decoder.iou_token.weight.element_size()
        return max(1, min(self.points_per_batch, CPU_CALL_BYTES // per_point))

    @torch.no_grad()
    def propose(
        self,
        image: np.ndarray,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
    ) -> MaskCandidates:
        """Run the model on every crop and return the masks that pass the thresholds
        (the generator's own unless given), before NMS. `select` may then apply any
        thresholds at least as strict; propose with 0 to keep every mask."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"expected an H x W x 3 uint8 RGB image, got {image.shape} {image.dtype}"
            )
        iou_thresh = self.pred_iou_thresh if pred_iou_thresh is None else float(pred_iou_thresh)
        stab_thresh = (
            self.stability_score_thresh
            if stability_score_thresh is None
            else float(stability_score_thresh)
        )
        height, width = image.shape[:2]
        boxes, layers = crop_boxes((height, width), self.crop_n_layers, self.crop_overlap_ratio)
        parts = []
        on_cpu = self.model.device.type == "cpu"
        with retained_heap() if on_cpu else contextlib.nullcontext():
            for crop_id, (box, layer) in enumerate(zip(boxes, layers, strict=True)):
                x0, y0, x1, y1 = box
                self.predictor.set_image(image[y0:y1, x0:x1])
                prepared = self.model.prepare_decoder(self.predictor.features)
                scale = np.array([x1 - x0, y1 - y0], dtype=np.float64)
                points = self.point_grids[layer] * scale
                step = self.points_per_call()
                for start in range(0, len(points), step):
                    batch = points[start : start + step]
                    part = self._decode_points(
                        prepared, batch, box, (height, width), iou_thresh, stab_thresh
                    )
                    parts.append((crop_id, part))
        self.predictor.reset_image()

        def column(key: str, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
            values = [part[key] for _, part in parts]
            return torch.cat(values) if values else torch.zeros(shape, dtype=dtype)

        return MaskCandidates(
            rles=[rle for _, part in parts for rle in part["rles"]],
            boxes=column("boxes", torch.long, (0, 4)),
            areas=column("areas", torch.long, (0,)),
            iou_preds=column("iou_preds", torch.float32, (0,)),
            stability=column("stability", torch.float32, (0,)),
            points=column("points", torch.float64, (0, 2)),
            crop_ids=torch.tensor(
                [crop_id for crop_id, part in parts for _ in part["rles"]], dtype=torch.long
            ),
            crop_boxes=boxes,
            image_size=(height, width),
            pred_iou_thresh=iou_thresh,
            stability_score_thresh=stab_thresh,
        )

    def _decode_points(
        self,
        prepared: Any,
        points: np.ndarray,
        crop_box: list[int],
        image_size: tuple[int, int],
        iou_thresh: float,
        stab_thresh: float,
    ) -> dict[str, Any]:
        """Decode `P x 2` points (crop frame, float64) on the current crop (`prepared`:
        the model's `prepare_decoder`)."""
        sam, predictor = self.model, self.predictor
        crop_size = (crop_box[3] - crop_box[1], crop_box[2] - crop_box[0])
        coords = sam.transform_grid_points(points, crop_size)[:, None, :]  # input frame
        labels = torch.ones(coords.shape[:2], dtype=torch.int, device=sam.device)
        low_res, iou_preds = sam.decode_prepared(prepared, coords, labels, True)
        n_out = low_res.shape[1]
        low_res, iou_preds = low_res.flatten(0, 1), iou_preds.flatten(0, 1)
        point_of = torch.arange(len(points), device=sam.device).repeat_interleave(n_out)

        keep = torch.ones_like(iou_preds, dtype=torch.bool)
        if iou_thresh > 0:  # on the low-res outputs: only the masks that pass get upscaled
            keep = iou_preds > iou_thresh
        logits = sam.masks_to_original(low_res[keep][:, None], predictor.input_size, crop_size)
        logits = logits[:, 0]  # K x h x w logits, crop frame
        stability = stability_score(logits, sam.mask_threshold, self.stability_score_offset)
        stable = torch.ones_like(stability, dtype=torch.bool)
        if stab_thresh > 0:
            stable = stability >= stab_thresh
        masks = logits[stable] > sam.mask_threshold
        boxes = mask_boxes(masks)
        inside = ~near_crop_edge(boxes, crop_box, [0, 0, image_size[1], image_size[0]])
        masks, boxes = masks[inside], boxes[inside]
        picked = keep.nonzero().flatten()[stable][inside]

        point_xy = torch.as_tensor(points)[point_of[picked].cpu()]
        return {
            "rles": masks_to_rle(uncrop_masks(masks, crop_box, *image_size)),
            "boxes": uncrop_boxes(boxes, crop_box).cpu(),
            "areas": masks.sum(dim=(1, 2)).cpu(),
            "iou_preds": iou_preds[picked].float().cpu(),
            "stability": stability[stable][inside].float().cpu(),
            "points": uncrop_points(point_xy, crop_box),
        }

    def select(
        self,
        candidates: MaskCandidates,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
    ) -> list[dict[str, Any]]:
        """Filter candidates by the thresholds (the generator's own unless given), run the
        NMS steps and the small-region clean-up, and return records, as `generate` would
        have with those thresholds.

        Each record: `segmentation` (per `output_mode`), `area` (int), `bbox` [x, y, w, h]
        with w = x1 - x0 on the inclusive box (as the official generator), `predicted_iou`,
        `point_coords` [[x, y]], `stability_score`, `crop_box` [x, y, w, h].
        """
        iou_thresh = self.pred_iou_thresh if pred_iou_thresh is None else float(pred_iou_thresh)
        stab_thresh = (
            self.stability_score_thresh
            if stability_score_thresh is None
            else float(stability_score_thresh)
        )
        kept = select_masks(
            candidates,
            iou_thresh,
            stab_thresh,
            self.box_nms_thresh,
            self.crop_nms_thresh,
            self.min_mask_region_area,
            self.covered_thresh,
        )
        return to_records(kept, self.output_mode)

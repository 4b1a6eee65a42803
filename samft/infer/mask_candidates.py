"""The masks a generator proposed for one image, and how they become its records.

`AutomaticMaskGenerator.propose` runs the model and returns `MaskCandidates`: every mask that
passed its thresholds, before any NMS. `select_masks` filters them with thresholds at least
as strict, removes duplicates with box NMS (within each crop, then across crops) and cleans
small regions, exactly as the official generator does after decoding, and optionally drops
masks that better ones already cover (`suppress_covered`, not in the official generator);
`to_records` turns what is left into the official generator's records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from samft.infer.mask_ops import batched_nms, mask_boxes, remove_small_regions
from samft.infer.rle import Rle, masks_to_rle, rle_to_coco, rle_to_mask, rles_to_masks

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


@dataclass
class MaskCandidates:
    """The masks of one image that passed the thresholds of `propose`, before any NMS.

    Rows are in the order the model produced them (crop by crop, point by point, then the
    three answers of a point). All tensors are on the CPU; frames are the original image's.
    """

    rles: list[Rle]  # K uncompressed RLEs, H x W
    boxes: Tensor  # K x 4 int64 (x0, y0, x1, y1), inclusive
    areas: Tensor  # K int64 pixels
    iou_preds: Tensor  # K float32
    stability: Tensor  # K float32
    points: Tensor  # K x 2 float64 (x, y) the prompt of each mask
    crop_ids: Tensor  # K int64, index into crop_boxes
    crop_boxes: list[list[int]]  # all crops of the image, [x0, y0, x1, y1]
    image_size: tuple[int, int]  # (H, W)
    pred_iou_thresh: float  # the thresholds these candidates were filtered with
    stability_score_thresh: float

    def __len__(self) -> int:
        return len(self.rles)

    def subset(self, index: Tensor) -> MaskCandidates:
        """The rows picked by a bool mask or an int64 index (in that order)."""
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        picks = index.tolist()
        return replace(
            self,
            rles=[self.rles[i] for i in picks],
            boxes=self.boxes[index],
            areas=self.areas[index],
            iou_preds=self.iou_preds[index],
            stability=self.stability[index],
            points=self.points[index],
            crop_ids=self.crop_ids[index],
        )


def select_masks(
    candidates: MaskCandidates,
    pred_iou_thresh: float,
    stability_score_thresh: float,
    box_nms_thresh: float,
    crop_nms_thresh: float,
    min_mask_region_area: int = 0,
    covered_thresh: float = 1.0,
) -> MaskCandidates:
    """The candidates that pass the thresholds (predicted IoU > `pred_iou_thresh`,
    stability >= `stability_score_thresh`; 0 disables either), after NMS within each crop
    (by predicted IoU), across crops (masks from smaller crops win), when
    `min_mask_region_area` > 0 the small-region clean-up, and when `covered_thresh` < 1
    `suppress_covered`. The thresholds must be at least those the candidates were proposed
    with."""
    if (
        pred_iou_thresh < candidates.pred_iou_thresh
        or stability_score_thresh < candidates.stability_score_thresh
    ):
        raise ValueError(
            "select thresholds must be at least those the candidates were proposed with "
            f"({candidates.pred_iou_thresh}, {candidates.stability_score_thresh})"
        )
    keep = torch.ones(len(candidates), dtype=torch.bool)
    if pred_iou_thresh > 0:
        keep &= candidates.iou_preds > pred_iou_thresh
    if stability_score_thresh > 0:
        keep &= candidates.stability >= stability_score_thresh
    kept = candidates.subset(keep)

    within_crops = []  # NMS inside each crop, by predicted IoU
    for crop_id in range(len(kept.crop_boxes)):
        rows = (kept.crop_ids == crop_id).nonzero().flatten()
        order = batched_nms(kept.boxes[rows].float(), kept.iou_preds[rows], None, box_nms_thresh)
        within_crops.append(rows[order])
    kept = kept.subset(torch.cat(within_crops))

    if len(kept.crop_boxes) > 1:  # across crops, masks from smaller crops first
        crop_xyxy = torch.tensor(kept.crop_boxes, dtype=torch.long)[kept.crop_ids]
        crop_area = (crop_xyxy[:, 2] - crop_xyxy[:, 0]) * (crop_xyxy[:, 3] - crop_xyxy[:, 1])
        order = batched_nms(kept.boxes.float(), 1 / crop_area, None, crop_nms_thresh)
        kept = kept.subset(order)

    if min_mask_region_area > 0 and len(kept) > 0:
        kept = clean_small_regions(kept, min_mask_region_area, max(box_nms_thresh, crop_nms_thresh))
    if covered_thresh < 1.0:
        kept = suppress_covered(kept, covered_thresh)
    return kept


def suppress_covered(kept: MaskCandidates, covered_thresh: float) -> MaskCandidates:
    """Drop each mask of which more than `covered_thresh` of its area lies in the masks
    kept before it, going down the predicted IoU; empty masks are dropped too.

    Box NMS keeps a part of an object beside the whole (their boxes differ), and one
    object's mask beside a mask of it and its neighbours. A label image painted from such
    masks (smaller on top) splits the larger into pieces, each a false positive of an
    instance metric. Taking masks best first and dropping those that are mostly covered
    keeps one mask per object, the one the IoU head scores best. The kept rows stay in the
    order of decreasing predicted IoU.
    """
    if not 0.0 <= covered_thresh <= 1.0:
        raise ValueError(f"covered_thresh must be in [0, 1], got {covered_thresh}")
    if len(kept) == 0:
        return kept
    order = torch.argsort(kept.iou_preds, descending=True, stable=True).tolist()
    covered = np.zeros(kept.image_size, dtype=bool)
    picks = []
    for index in order:  # one mask decoded at a time: memory stays one image, not K
        area = int(kept.areas[index])
        if area == 0:
            continue
        mask = rle_to_mask(kept.rles[index])
        if np.count_nonzero(mask & covered) > covered_thresh * area:
            continue
        picks.append(index)
        covered |= mask
    return kept.subset(torch.tensor(picks, dtype=torch.long))


def clean_small_regions(kept: MaskCandidates, min_area: int, nms_thresh: float) -> MaskCandidates:
    """Fill holes and drop islands smaller than `min_area` pixels, then NMS again
    (box IoU above `nms_thresh`) preferring the masks the clean-up left untouched."""
    cleaned, changed = [], []
    for mask in rles_to_masks(kept.rles):
        mask, filled = remove_small_regions(mask, min_area, "holes")
        mask, dropped = remove_small_regions(mask, min_area, "islands")
        cleaned.append(mask)
        changed.append(filled or dropped)
    masks = torch.as_tensor(np.stack(cleaned))
    boxes = mask_boxes(masks)
    scores = 1.0 - torch.tensor(changed, dtype=torch.float32)
    order = batched_nms(boxes.float(), scores, None, nms_thresh)
    rles, new_boxes, areas = list(kept.rles), kept.boxes.clone(), kept.areas.clone()
    redo = [i for i in order.tolist() if changed[i]]
    if redo:
        for i, rle in zip(redo, masks_to_rle(masks[redo]), strict=True):
            rles[i] = rle
        new_boxes[redo] = boxes[redo]
        areas[redo] = masks[redo].sum(dim=(1, 2))
    return replace(kept, rles=rles, boxes=new_boxes, areas=areas).subset(order)


def to_records(kept: MaskCandidates, output_mode: str) -> list[dict[str, Any]]:
    """The official generator's records of the kept masks.

    Each record: `segmentation` (per `output_mode`: `H x W` bool, uncompressed or COCO
    RLE), `area` (int), `bbox` [x, y, w, h] with w = x1 - x0 on the inclusive box (as the
    official generator), `predicted_iou`, `point_coords` [[x, y]], `stability_score`,
    `crop_box` [x, y, w, h].
    """
    if output_mode not in OUTPUT_MODES:
        raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
    if len(kept) == 0:
        return []
    if output_mode == "binary_mask":
        segmentations: list[Any] = list(rles_to_masks(kept.rles))
    elif output_mode == "coco_rle":
        segmentations = rle_to_coco(kept.rles)
    else:
        segmentations = kept.rles
    columns = zip(
        segmentations,
        kept.areas.tolist(),
        kept.boxes.tolist(),
        kept.iou_preds.tolist(),
        kept.points.tolist(),
        kept.stability.tolist(),
        kept.crop_ids.tolist(),
        strict=True,
    )
    records = []
    for segmentation, area, box, iou, point, stability, crop_id in columns:
        records.append(
            {
                "segmentation": segmentation,
                "area": area,
                "bbox": _xywh(box),
                "predicted_iou": iou,
                "point_coords": [point],
                "stability_score": stability,
                "crop_box": _xywh(kept.crop_boxes[crop_id]),
            }
        )
    return records


def _xywh(box: Sequence[int]) -> list[int]:
    """[x0, y0, x1, y1] -> [x0, y0, x1 - x0, y1 - y0]."""
    x0, y0, x1, y1 = box
    return [x0, y0, x1 - x0, y1 - y0]

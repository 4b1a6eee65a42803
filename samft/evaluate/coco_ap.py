"""COCO mask AP of generator records against ground-truth instances, via pycocotools."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from samft.infer.record_masks import coco_segmentation
from samft.infer.rle import masks_to_coco
from samft.train.instance_metrics import instance_masks


def coco_mask_ap(
    predictions: Sequence[Sequence[Mapping[str, Any]]],
    ground_truths: Sequence[np.ndarray],
    score_key: str = "predicted_iou",
    max_detections: int = 1000,
    crowds: Sequence[np.ndarray | None] | None = None,
) -> dict[str, float]:
    """COCO mask AP of generator records against ground-truth instances, via pycocotools.

    Args:
        predictions: per image, the records of `AutomaticMaskGenerator` (any output mode).
        ground_truths: per image, a label image or a mask stack.
        score_key: the record field used as detection score.
        max_detections: detections per image that count (COCO's default of 100 is too few
            for dense images such as nuclei).
        crowds: per image, an `H x W` mask of its crowd regions or None; they go to
            pycocotools as `iscrowd: 1` regions, which it ignores as COCO does.

    Returns:
        `AP` (IoU 0.50:0.95), `AP50`, `AP75`; NaN when there are no ground-truth objects.
    """
    if len(predictions) != len(ground_truths):
        raise ValueError("one list of records per ground-truth image is needed")
    crowds = list(crowds) if crowds is not None else [None] * len(ground_truths)
    images, annotations, detections = [], [], []
    for image_id, (records, gt) in enumerate(zip(predictions, ground_truths, strict=True), 1):
        masks = instance_masks(gt)
        images.append({"id": image_id, "height": masks.shape[1], "width": masks.shape[2]})
        masks = masks[masks.any(axis=(1, 2))]  # an empty object can be neither hit nor missed
        n_objects = len(masks)
        crowd = crowds[image_id - 1]
        if crowd is not None and crowd.any():
            masks = np.concatenate([masks, crowd[None].astype(bool)])
        for index, (rle, mask) in enumerate(zip(masks_to_coco(masks), masks, strict=True)):
            ys, xs = np.nonzero(mask)
            box = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCOeval treats id 0 as "unmatched"
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": int(mask.sum()),
                    "bbox": box,
                    "iscrowd": int(index >= n_objects),
                }
            )
        for record in records:
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": coco_segmentation(record["segmentation"]),
                    "score": float(record[score_key]),
                }
            )
    if not any(a["iscrowd"] == 0 for a in annotations):
        return {"AP": float("nan"), "AP50": float("nan"), "AP75": float("nan")}
    if not detections:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "object"}],
        }
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(detections), iouType="segm")
        evaluation.params.maxDets = [1, 10, int(max_detections)]
        evaluation.evaluate()
        evaluation.accumulate()
    # precision: thresholds x recall points x classes x area ranges x max-dets; area "all"
    # and the largest max-dets, averaged as COCOeval.summarize does (-1 marks "no data")
    precision = evaluation.eval["precision"][:, :, 0, 0, -1]
    thresholds = evaluation.params.iouThrs

    def average(rows: np.ndarray) -> float:
        valid = rows[rows > -1]
        return float(valid.mean()) if valid.size else float("nan")

    return {
        "AP": average(precision),
        "AP50": average(precision[np.isclose(thresholds, 0.5)]),
        "AP75": average(precision[np.isclose(thresholds, 0.75)]),
    }

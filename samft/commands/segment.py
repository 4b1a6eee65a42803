"""`python -m samft segment checkpoint=PATH input=IMAGE_OR_FOLDER output=DIR [key=value ...]`.

Segment everything: for every image, an instance-id PNG, the masks with their scores (COCO
RLE, JSON) and an overlay, from a trained instance head (`mode=head`, the default where the
checkpoint has one) or a grid of point prompts (`mode=grid`). The work is
`samft.infer.segment.segment`; this file only reads the config.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from samft.commands.accelerator import check_device
from samft.commands.schema import (
    AUTOMATIC_MASK_SETTINGS,
    HEAD_SETTINGS,
    check_required,
    check_settings,
)
from samft.data.images import allow_image_pixels
from samft.infer.segment import segment

REQUIRED = {
    "checkpoint": "checkpoint=PATH",
    "input": "input=IMAGE_OR_FOLDER",
    "output": "output=DIR",
}


@hydra.main(version_base="1.3", config_path="pkg://samft.conf", config_name="segment")
def main(cfg: DictConfig) -> None:
    allow_image_pixels(cfg.max_image_pixels)
    check_required(cfg, REQUIRED, "segment")
    check_settings(cfg, AUTOMATIC_MASK_SETTINGS, "")
    check_settings(cfg, HEAD_SETTINGS, "")
    check_device(cfg.device)
    segment(
        checkpoint=cfg.checkpoint,
        input=cfg.input,
        output=cfg.output,
        points_per_side=cfg.points_per_side,
        points_per_batch=cfg.points_per_batch,
        pred_iou_thresh=cfg.pred_iou_thresh,
        stability_score_thresh=cfg.stability_score_thresh,
        stability_score_offset=cfg.stability_score_offset,
        box_nms_thresh=cfg.box_nms_thresh,
        covered_thresh=cfg.covered_thresh,
        crop_n_layers=cfg.crop_n_layers,
        crop_overlap_ratio=cfg.crop_overlap_ratio,
        crop_n_points_downscale_factor=cfg.crop_n_points_downscale_factor,
        min_mask_region_area=cfg.min_mask_region_area,
        variant=cfg.variant,
        image_size=cfg.image_size,
        device=cfg.device,
        overlay=cfg.overlay,
        mode=cfg.mode,
        head_thresholds={key: cfg[key] for key in HEAD_SETTINGS},
    )

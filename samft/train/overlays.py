"""A picture of predictions at every validation: image with ground truth | with prediction.

The LightningModule keeps the first validation batch and its predicted masks in
`overlay_batch`; this callback draws them with the data report's `draw_sample` (so the
training pictures and `samft data` pictures look the same), writes a PNG into the run
directory and hands it to every logger that takes images (W&B, TensorBoard).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from PIL import Image

from samft.data.visualize import draw_sample


def _image_samples(batch: dict[str, Any], pred_masks: Any, index: int) -> tuple[dict, dict]:
    """The ground-truth and predicted views of image `index` as `draw_sample` inputs."""
    objects = (batch["object_image_index"] == index).nonzero().flatten().cpu()
    h, w = (int(v) for v in batch["input_sizes"][index])
    common = {
        "image": batch["images"][index].cpu(),
        "point_coords": batch["point_coords"][objects].cpu(),
        "point_labels": batch["point_labels"][objects].cpu(),
    }
    image_id = str(batch["image_ids"][index])
    truth = {**common, "masks": batch["gt_masks"][objects, :h, :w].cpu(), "image_id": image_id}
    pred = {**common, "masks": pred_masks[objects, :h, :w], "image_id": f"{image_id} pred"}
    return truth, pred


def render_predictions(overlay: dict[str, Any], num_images: int, tile: int = 320) -> np.ndarray:
    """One row per image: ground truth and prompts | prediction and prompts (H x W x 3)."""
    batch = overlay["batch"]
    rows = []
    for index in range(min(num_images, len(batch["images"]))):
        truth, pred = _image_samples(batch, overlay["pred_masks"], index)
        gap = np.full((tile, 4, 3), 255, np.uint8)
        rows.append(np.concatenate([draw_sample(truth, tile), gap, draw_sample(pred, tile)], 1))
    if not rows:
        raise ValueError("render_predictions: the validation batch has no image")
    spacer = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([part for row in rows for part in (row, spacer)][:-1], axis=0)


class PredictionPictures(L.Callback):
    """Draw the first `num_images` validation images with ground truth and prediction."""

    def __init__(self, num_images: int = 4, tile: int = 320) -> None:
        self.num_images = num_images
        self.tile = tile

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        overlay = getattr(pl_module, "overlay_batch", None)
        if overlay is None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        picture = render_predictions(overlay, self.num_images, self.tile)
        pl_module.overlay_batch = None
        folder = Path(trainer.default_root_dir) / "predictions"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step{trainer.global_step:07d}.png"
        Image.fromarray(picture).save(path)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # Weights & Biases
                logger.log_image("val/predictions", [picture], step=trainer.global_step)
            elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoard
                logger.experiment.add_image(
                    "val/predictions", picture, trainer.global_step, dataformats="HWC"
                )

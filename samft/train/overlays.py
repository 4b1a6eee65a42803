"""A picture of predictions at every validation: image with ground truth | with prediction.

`SamFineTuner.validation_step` returns the first answer's masks and their IoU; this
callback takes them for the first validation batch (`on_validation_batch_end`, so no batch
is kept alive), draws them with the data report's `draw_sample` (training pictures and
`samft data` pictures look the same), writes a PNG into the run directory and hands it to
every logger that takes images (W&B, TensorBoard).

Legend: left, the ground-truth masks and the prompts; right, the predicted masks (outlined,
lightly filled, so they show on coloured images) with the step, the mean IoU of the
pictured objects and each object's IoU in the caption.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from PIL import Image
from torch import Tensor

from samft.data.batch import SamBatch
from samft.data.visualize import draw_sample


def _image_samples(batch: SamBatch, pred_masks: Tensor, index: int) -> tuple[dict, dict, Tensor]:
    """The ground-truth and predicted views of image `index` as `draw_sample` inputs, and
    the indices of its objects."""
    objects = (batch.object_image_index == index).nonzero().flatten().cpu()
    h, w = (int(v) for v in batch.input_sizes[index])
    common = {
        "image": batch.images[index].cpu(),
        "point_coords": batch.prompts.coords[objects].cpu(),
        "point_labels": batch.prompts.labels[objects].cpu(),
        "image_id": str(batch.image_ids[index]),
    }
    truth = {**common, "masks": batch.gt_masks[objects, :h, :w].cpu()}
    pred = {**common, "masks": pred_masks.cpu()[objects, :h, :w]}
    return truth, pred, objects


def render_predictions(
    batch: SamBatch, outputs: dict[str, Tensor], num_images: int, step: int, tile: int = 320
) -> np.ndarray:
    """One row per image: ground truth and prompts | prediction and prompts (H x W x 3)."""
    rows = []
    ious = outputs["iou"].float().cpu()
    for index in range(min(num_images, len(batch))):
        truth, pred, objects = _image_samples(batch, outputs["pred_masks"], index)
        per_object = " ".join(f"{v:.2f}" for v in ious[objects].tolist()[:8])
        mean = float(ious[objects].mean()) if len(objects) else float("nan")
        caption = f"step {step} pred  mIoU {mean:.2f}  IoU {per_object}"
        gap = np.full((tile, 4, 3), 255, np.uint8)
        left = draw_sample(truth, tile, caption=f"{truth['image_id']} truth")
        right = draw_sample(pred, tile, alpha=0.15, outline=2, caption=caption)
        rows.append(np.concatenate([left, gap, right], 1))
    if not rows:
        raise ValueError("render_predictions: the validation batch has no image")
    spacer = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([part for row in rows for part in (row, spacer)][:-1], axis=0)


class PredictionPictures(L.Callback):
    """Draw the first `num_images` validation images with ground truth and prediction."""

    def __init__(self, num_images: int = 4, tile: int = 320) -> None:
        self.num_images = num_images
        self.tile = tile

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or not outputs or not trainer.is_global_zero:
            return
        if trainer.sanity_checking:
            return
        step = trainer.global_step
        picture = render_predictions(batch, outputs, self.num_images, step, self.tile)
        folder = Path(trainer.default_root_dir) / "predictions"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).save(folder / f"step{step:07d}.png")
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # Weights & Biases
                logger.log_image("val/predictions", [picture], step=step)
            elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoard
                logger.experiment.add_image("val/predictions", picture, step, dataformats="HWC")

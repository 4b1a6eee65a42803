"""The LightningModule that fine-tunes a full `Sam` or `Sam2`: the training and validation
loops.

One image-encoder pass per image, then every prompt of the batch goes through the prompt
encoder and the mask decoder in one batched call (`samft.model.batched`, where each
generation's differences sit behind the model). Optional
correction rounds follow the SAM paper (`samft.train.rounds`): a click sampled from the
error region of the best mask, with the previous low-res logits fed back as the mask prompt.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning as L
import torch
from torch import Tensor

from samft.data.batch import SamBatch
from samft.model import batched
from samft.model.lora import apply_lora
from samft.model.prompts import Prompts
from samft.model.registry import build_sam
from samft.model.sam import Sam
from samft.model.sam2 import Sam2
from samft.train.automatic_loss import automatic_point_loss
from samft.train.config import (
    FinetuneConfig,
    InteractiveConfig,
    LossConfig,
    ModelConfig,
    as_config,
)
from samft.train.losses import SamLoss
from samft.train.metrics import PromptedSegmentationMetrics
from samft.train.optim import OptimConfig, build_optimizer
from samft.train.rounds import next_round_prompts, round_plan
from samft.weights import load_sam


class SamFineTuner(L.LightningModule):
    """Trains a `Sam` kept in `self.model` (so checkpoint keys are `model.image_encoder...`).

    All arguments are plain dicts or config dataclasses, so the module is usable from
    Python without Hydra and its hyper-parameters are saved as plain values.
    """

    def __init__(
        self,
        model: dict | ModelConfig | None = None,
        finetune: dict | FinetuneConfig | None = None,
        interactive: dict | InteractiveConfig | None = None,
        loss: dict | LossConfig | None = None,
        optim: dict | OptimConfig | None = None,
    ) -> None:
        super().__init__()
        self.validated_at_step: int | None = None  # the step of the last validation in fit
        self.model_config = as_config(ModelConfig, model, "model")
        self.finetune_config = as_config(FinetuneConfig, finetune, "finetune")
        self.interactive_config = as_config(InteractiveConfig, interactive, "interactive")
        self.loss_config = as_config(LossConfig, loss, "loss")
        self.optim_config = as_config(OptimConfig, optim, "optim")
        self.save_hyperparameters(
            {
                "model": dataclasses.asdict(self.model_config),
                "finetune": dataclasses.asdict(self.finetune_config),
                "interactive": dataclasses.asdict(self.interactive_config),
                "loss": dataclasses.asdict(self.loss_config),
                "optim": dataclasses.asdict(self.optim_config),
            }
        )
        self.model: Sam | Sam2 = self._build_model().train()
        self._set_trainable()
        self.loss_fn = SamLoss(**self.loss_config.sam_loss_arguments())
        self.val_metrics = PromptedSegmentationMetrics(
            max_click_round=max(self.interactive_config.val_clicks, default=0)
        )

    # ----------------------------------------------------------------- set-up
    def _build_model(self) -> Sam | Sam2:
        cfg = self.model_config
        kwargs = {
            "image_size": cfg.image_size,
            "activation_checkpointing": cfg.activation_checkpointing,
        }
        if cfg.checkpoint:
            sam = load_sam(
                cfg.checkpoint, variant=cfg.variant, cache_dir=cfg.weights_cache, **kwargs
            )
        else:
            sam = build_sam(cfg.variant, **kwargs)
        if self.finetune_config.image_encoder == "lora":
            ft = self.finetune_config
            apply_lora(
                sam.image_encoder, ft.lora_rank, ft.lora_alpha, ft.lora_dropout, ft.lora_targets
            )
        if cfg.compile:  # in place: parameter names and checkpoint keys stay the same
            backend = "inductor" if cfg.compile is True else str(cfg.compile)
            sam.image_encoder.compile(backend=backend)
            sam.mask_decoder.compile(backend=backend)
        return sam

    def _set_trainable(self) -> None:
        ft = self.finetune_config
        for name, param in self.model.image_encoder.named_parameters():
            if ft.image_encoder == "full":
                param.requires_grad_(True)
            elif ft.image_encoder == "lora":
                param.requires_grad_(".lora_" in f".{name.rsplit('.', 1)[-1]}")
            else:
                param.requires_grad_(False)
        self.model.prompt_encoder.requires_grad_(ft.prompt_encoder)
        self.model.mask_decoder.requires_grad_(ft.mask_decoder)
        if ft.image_encoder == "frozen":  # SAM 2: what `encode` uses beside the encoder
            for param in self.model.frozen_with_encoder():
                param.requires_grad_(False)

    @property
    def encoder_is_trained(self) -> bool:
        return self.finetune_config.image_encoder != "frozen"

    # ------------------------------------------------------------- forward parts
    def encode_images(self, images: list[Tensor]) -> Any:
        """B images (3 x h x w, uint8, input frame) -> the decoder's features (SAM:
        B x C x h' x w'); a frozen encoder runs without autograd so it builds no graph."""
        with torch.set_grad_enabled(self.encoder_is_trained and torch.is_grad_enabled()):
            return batched.encode_images(self.model, images)

    def batch_embeddings(self, batch: SamBatch) -> Any:
        """The decoder's features of the batch's B images (SAM: B x C x h' x w'): from the
        cache when the batch carries them, else the encoder's output for its images."""
        if batch.embeddings is not None:
            return self.model.from_cached(batch.embeddings)
        return self.encode_images(batch.images)

    def valid_region(self, batch: SamBatch) -> Tensor:
        """P x S x S, True inside each object's image (False on the padding)."""
        sizes = batch.input_sizes[batch.object_image_index]  # P x 2 (h, w)
        return batched.inside_image(sizes, self.model.image_size)

    def num_objects_per_rank(self, count: int) -> float:
        """Objects summed over ranks / world size: with DDP's gradient averaging this makes
        the loss a mean over all objects of the global batch."""
        total = torch.tensor(float(count), device=self.device)
        trainer = self._trainer  # None when the module is used without a Trainer
        if trainer is not None and trainer.world_size > 1:
            total = trainer.strategy.reduce(total, reduce_op="sum") / trainer.world_size
        return max(float(total), 1.0)

    # ---------------------------------------------------------------- training
    def trained_rounds(self, batch_idx: int) -> tuple[int, set[int]]:
        """This step's rounds and the trained ones (`samft.train.rounds.round_plan`)."""
        step = self.global_step if self._trainer is not None else batch_idx
        return round_plan(self.interactive_config, step)

    def decode_round(
        self, embeddings: Any, batch: SamBatch, prompts: Prompts, round_index: int
    ) -> tuple[batched.DecoderOutput, Tensor]:
        """One round of the interactive loop: the decoder's outputs and their logits
        upscaled to the padded input square (P x 4 x S x S). Only the first round may
        answer with the multimask outputs."""
        multimask = self.interactive_config.multimask_output if round_index == 0 else False
        out = batched.decode(
            self.model, embeddings, batch.object_image_index, prompts, multimask_output=multimask
        )
        return out, batched.upscale(self.model, out.low_res)

    def feedback_index(self, out: batched.DecoderOutput, lowest_loss: Tensor) -> Tensor:
        """P: the output each object's next round builds on (`interactive.feedback_mask`):
        the answering mask the IoU head scores highest, or the lowest-loss one."""
        if self.interactive_config.feedback_mask == "lowest_loss":
            return lowest_loss
        return out.predicted_best()

    def training_step(self, batch: SamBatch, batch_idx: int) -> Tensor:
        cfg = self.interactive_config
        embeddings = self.batch_embeddings(batch)
        gt = batch.gt_masks
        valid = self.valid_region(batch)
        num_objects = self.num_objects_per_rank(gt.shape[0])
        prompts = batch.prompts
        rows = torch.arange(gt.shape[0], device=gt.device)

        num_rounds, counted = self.trained_rounds(batch_idx)
        totals: dict[str, Tensor] = {}
        for round_index in range(num_rounds):
            with torch.set_grad_enabled(round_index in counted and torch.is_grad_enabled()):
                out, logits = self.decode_round(embeddings, batch, prompts, round_index)
                loss = self.loss_fn(
                    logits,
                    out.iou_pred,
                    gt,
                    valid,
                    num_objects,
                    answering=out.answering,
                    object_scores=out.object_score,
                )
            if round_index in counted:
                for key, value in loss.parts().items():
                    totals[key] = totals.get(key, 0.0) + value / len(counted)
            if round_index == num_rounds - 1:
                break
            best = self.feedback_index(out, loss.best_index)
            pred = None
            if round_index < cfg.correction_rounds:
                pred = logits[rows, best].detach() > self.model.mask_threshold
            feedback = batched.feedback_logits(self.model, out.low_res[rows, best].detach())
            prompts = next_round_prompts(prompts, feedback, pred, gt, valid, cfg.click_mode)
        automatic = batch.automatic
        if automatic is not None and self.loss_config.automatic_weight > 0:
            num_points = self.num_objects_per_rank(automatic.points.shape[0])
            auto = automatic_point_loss(
                self.model, self.loss_fn, embeddings, automatic, batch.input_sizes, num_points
            )
            totals["total"] = totals["total"] + self.loss_config.automatic_weight * auto.total
            totals["automatic"] = auto.total

        for key, value in totals.items():
            name = "train/loss" if key == "total" else f"train/loss_{key}"
            self.log(name, value, prog_bar=key == "total", batch_size=len(batch))
        return totals["total"]

    # -------------------------------------------------------------- validation
    def validation_step(self, batch: SamBatch, batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate_batch(batch, self.val_metrics, "val")

    def test_step(self, batch: SamBatch, batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate_batch(batch, self.val_metrics, "test")

    @torch.no_grad()
    def _evaluate_batch(
        self, batch: SamBatch, metrics: PromptedSegmentationMetrics, stage: str
    ) -> dict[str, Tensor]:
        """First prompt, then simulated centre clicks; the mask kept at each step is the
        one the IoU head scores highest, as at inference. Returns the first answer's
        masks (`pred_masks` P x S x S bool) and their IoU with the ground truth (`iou` P),
        which `PredictionPictures` draws."""
        cfg = self.interactive_config
        embeddings = self.batch_embeddings(batch)
        gt = batch.gt_masks
        valid = self.valid_region(batch)
        rows = torch.arange(gt.shape[0], device=gt.device)
        prompts = batch.prompts
        update = {
            "gt_masks": gt,
            "valid": valid,
            "prompt_types": batch.prompt_types,
            "object_areas": batch.object_areas,
        }
        first: dict[str, Tensor] = {}
        max_clicks = max(cfg.val_clicks, default=0)
        for click in range(max_clicks + 1):
            out, logits = self.decode_round(embeddings, batch, prompts, click)
            best = out.predicted_best()
            pred = logits[rows, best] > self.model.mask_threshold
            if click == 0:
                loss = self.loss_fn(
                    logits,
                    out.iou_pred,
                    gt,
                    valid,
                    float(gt.shape[0]),
                    answering=out.answering,
                    object_scores=out.object_score,
                )
                self.log(f"{stage}/loss", loss.total, batch_size=len(batch), sync_dist=True)
                inter = (pred & gt & valid).flatten(1).sum(1)
                union = ((pred | gt) & valid).flatten(1).sum(1).clamp(min=1)
                first = {"pred_masks": pred, "iou": inter / union}
            if click == 0 or click in cfg.val_clicks:
                metrics.update(
                    pred_masks=pred,
                    iou_predictions=out.iou_pred[rows, best],
                    click_round=click,
                    **update,
                )
            if click == max_clicks:
                break
            feedback = batched.feedback_logits(self.model, out.low_res[rows, best])
            prompts = next_round_prompts(prompts, feedback, pred, gt, valid, "center")
        return first

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")
        if not self.trainer.sanity_checking:
            self.validated_at_step = self.trainer.global_step

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "test")

    def _log_metrics(self, metrics: PromptedSegmentationMetrics, stage: str) -> None:
        values = metrics.compute()
        self.log_dict({f"{stage}/{k}": v.float() for k, v in values.items()})
        metrics.reset()

    # ------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        total = int(self.trainer.estimated_stepping_batches) if self.trainer else 0
        optimizer, scheduler = build_optimizer(
            list(self.model.named_parameters()), self.optim_config, total
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

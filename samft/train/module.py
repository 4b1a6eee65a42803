"""The LightningModule that fine-tunes a full `Sam` or `Sam2`: the training and validation
loops.

One image-encoder pass per image, then every prompt of the batch goes through the prompt
encoder and the mask decoder in one batched call (`samft.model.batched`, where each
generation's differences sit behind the model). Optional
correction rounds follow the SAM paper (`samft.train.rounds`): a click sampled from the
error region of the best mask, with the previous low-res logits fed back as the mask prompt.

An optional instance head (`instance_head.enabled`, `samft.model.instance_head`) reads the
same embeddings, cached or not (SAM 2: `image_embed` and its two finer levels as skips, the
model's `instance_features`), and adds its loss (`loss.instance_weight`) to the prompted
one (`loss.prompted_weight`, 0 to train the head alone); it is kept in `self.instance_head`
(checkpoint keys `instance_head.*`), apart from the `Sam`, whose checkpoint keys and export
it leaves as they are. Validation then also logs its loss and the mSA / SA50 of its
instances (`seeded_watershed` at 0.5 thresholds, in the input frame).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning as L
import torch
from torch import Tensor

from samft.data.batch import SamBatch
from samft.infer.instance_watershed import seeded_watershed
from samft.model import batched
from samft.model.instance_head import InstanceHead
from samft.model.lora import apply_lora
from samft.model.prompts import Prompts
from samft.model.registry import build_sam
from samft.model.sam import Sam
from samft.model.sam2 import Sam2
from samft.train.automatic_loss import automatic_point_loss
from samft.train.config import (
    FinetuneConfig,
    InstanceHeadConfig,
    InteractiveConfig,
    LossConfig,
    ModelConfig,
    as_config,
)
from samft.train.instance_loss import instance_head_loss
from samft.train.instance_metrics import instance_scores
from samft.train.losses import SamLoss
from samft.train.metrics import PromptedSegmentationMetrics
from samft.train.optim import OptimConfig, build_optimizer, check_layer_decay
from samft.train.rounds import next_round_prompts, round_plan
from samft.weights import load_sam
from samft.weights.instance_head import read_instance_head


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
        instance_head: dict | InstanceHeadConfig | None = None,
    ) -> None:
        super().__init__()
        self.validated_at_step: int | None = None  # the step of the last validation in fit
        self.model_config = as_config(ModelConfig, model, "model")
        self.finetune_config = as_config(FinetuneConfig, finetune, "finetune")
        self.interactive_config = as_config(InteractiveConfig, interactive, "interactive")
        self.loss_config = as_config(LossConfig, loss, "loss")
        self.optim_config = as_config(OptimConfig, optim, "optim")
        self.instance_head_config = as_config(InstanceHeadConfig, instance_head, "instance_head")
        if self.loss_config.prompted_weight == 0 and not self.instance_head_config.enabled:
            raise ValueError(
                "loss.prompted_weight=0 trains nothing without an instance head: set "
                "instance_head.enabled=true, or a prompted_weight > 0"
            )
        hyper_parameters = {
            "model": dataclasses.asdict(self.model_config),
            "finetune": dataclasses.asdict(self.finetune_config),
            "interactive": dataclasses.asdict(self.interactive_config),
            "loss": dataclasses.asdict(self.loss_config),
            "optim": dataclasses.asdict(self.optim_config),
        }
        if self.instance_head_config.enabled:  # runs without a head keep their old record
            hyper_parameters["instance_head"] = dataclasses.asdict(self.instance_head_config)
        self.save_hyperparameters(hyper_parameters)
        self.model: Sam | Sam2 = self._build_model().train()
        self.instance_head: InstanceHead | None = None
        if self.instance_head_config.enabled:
            self.instance_head = self._build_instance_head().train()
        self._instance_scores: list[dict[str, float]] = []
        self._set_trainable()
        check_layer_decay([name for name, _ in self.model.named_parameters()], self.optim_config)
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

    def _build_instance_head(self) -> InstanceHead:
        """The head for this model's embedding (C x h' x w'), input size S and skips (SAM 2:
        its two finer levels, `instance_skip_channels`), with the weights of
        `model.checkpoint` when that file holds a head."""
        embed_h, _ = self.model.prompt_encoder.image_embedding_size
        head = InstanceHead(
            embed_dim=self.model.prompt_encoder.embed_dim,
            upsample_factor=self.model.image_size // embed_h,
            skip_channels=self.model.instance_skip_channels,
            **self.instance_head_config.head_arguments(),
        )
        checkpoint = self.model_config.checkpoint
        stored = read_instance_head(checkpoint) if checkpoint else None
        if stored is not None:
            head.load_state_dict(stored[0])
        return head

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

    def instance_logits(self, embeddings: Any, batch: SamBatch) -> Tensor:
        """B x 3 x S x S: the instance head's logits for the batch's images, from their
        features (`batch_embeddings`: SAM's embedding, SAM 2's three levels)."""
        assert self.instance_head is not None
        images = batched.preprocess_images(self.model, batch.images)
        embedding, skips = self.model.instance_features(embeddings)
        return self.instance_head(embedding, images, skips)

    def image_valid_region(self, batch: SamBatch) -> Tensor:
        """B x S x S, True inside each image (False on the padding)."""
        return batched.inside_image(batch.input_sizes, self.model.image_size)

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
    ) -> batched.DecoderOutput:
        """One round of the interactive loop: the decoder's outputs (low-res logits
        P x 4 x S/4 x S/4; `batched.upscale` brings them to the padded input square). Only
        the first round may answer with the multimask outputs."""
        multimask = self.interactive_config.multimask_output if round_index == 0 else False
        return batched.decode(
            self.model, embeddings, batch.object_image_index, prompts, multimask_output=multimask
        )

    def feedback_index(self, out: batched.DecoderOutput, lowest_loss: Tensor) -> Tensor:
        """P: the output each object's next round builds on (`interactive.feedback_mask`):
        the answering mask the IoU head scores highest, or the lowest-loss one."""
        if self.interactive_config.feedback_mask == "lowest_loss":
            return lowest_loss
        return out.predicted_best()

    def training_step(self, batch: SamBatch, batch_idx: int) -> Tensor:
        embeddings = self.batch_embeddings(batch)
        totals: dict[str, Tensor] = {}
        if self.loss_config.prompted_weight > 0:
            totals = self.prompted_losses(embeddings, batch, batch_idx)
            totals["total"] = self.loss_config.prompted_weight * totals["total"]
        total = totals.get("total", torch.zeros((), device=self.device))
        automatic = batch.automatic
        if automatic is not None and self.loss_config.automatic_weight > 0:
            num_points = self.num_objects_per_rank(automatic.points.shape[0])
            auto = automatic_point_loss(
                self.model, self.loss_fn, embeddings, automatic, batch.input_sizes, num_points
            )
            total = total + self.loss_config.automatic_weight * auto.total
            totals["automatic"] = auto.total
        if self.instance_head is not None and self.loss_config.instance_weight > 0:
            head = self.instance_loss(embeddings, batch)
            total = total + self.loss_config.instance_weight * head.total
            totals["instance"] = head.total
        totals["total"] = total

        for key, value in totals.items():
            name = "train/loss" if key == "total" else f"train/loss_{key}"
            self.log(name, value, prog_bar=key == "total", batch_size=len(batch))
        return totals["total"]

    def prompted_losses(
        self, embeddings: Tensor, batch: SamBatch, batch_idx: int
    ) -> dict[str, Tensor]:
        """The prompted loss of the step's trained rounds: `total`, `focal`, `dice`, `iou`."""
        cfg = self.interactive_config
        gt = batch.gt_masks
        valid = self.valid_region(batch)
        num_objects = self.num_objects_per_rank(gt.shape[0])
        prompts = batch.prompts
        rows = torch.arange(gt.shape[0], device=gt.device)

        num_rounds, counted = self.trained_rounds(batch_idx)
        totals: dict[str, Tensor] = {}
        for round_index in range(num_rounds):
            with torch.set_grad_enabled(round_index in counted and torch.is_grad_enabled()):
                out = self.decode_round(embeddings, batch, prompts, round_index)
                logits = batched.upscale(self.model, out.low_res)
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
        return totals

    def instance_loss(self, embeddings: Any, batch: SamBatch, logits: Tensor | None = None):
        """The instance head's loss on the batch (`InstanceLoss`), averaged over images."""
        if batch.instance_targets is None:
            raise ValueError(
                "the module has an instance head but the batch carries no instance targets: "
                "build the data module with instance_targets=True"
            )
        if logits is None:
            logits = self.instance_logits(embeddings, batch)
        return instance_head_loss(
            logits,
            batch.instance_targets,
            self.image_valid_region(batch),
            self.num_objects_per_rank(len(batch)),
            bce_weight=self.loss_config.instance_bce_weight,
        )

    # -------------------------------------------------------------- validation
    def validation_step(self, batch: SamBatch, batch_idx: int) -> dict[str, Tensor]:
        self._evaluate_instances(batch, "val")
        return self._evaluate_batch(batch, self.val_metrics, "val")

    def test_step(self, batch: SamBatch, batch_idx: int) -> dict[str, Tensor]:
        self._evaluate_instances(batch, "test")
        return self._evaluate_batch(batch, self.val_metrics, "test")

    @torch.no_grad()
    def _evaluate_instances(self, batch: SamBatch, stage: str) -> None:
        """The instance head's loss on the batch, and each image's instances scored against
        its id map (kept for the epoch's mean); nothing without a head."""
        if self.instance_head is None or batch.instance_labels is None:
            return
        embeddings = self.batch_embeddings(batch)
        logits = self.instance_logits(embeddings, batch)
        loss = self.instance_loss(embeddings, batch, logits)
        self.log(f"{stage}/instance_loss", loss.total, batch_size=len(batch), sync_dist=True)
        maps = logits.sigmoid().float().cpu().numpy()
        labels = batch.instance_labels.cpu().numpy()
        for index, (h, w) in enumerate(batch.input_sizes.tolist()):
            found = seeded_watershed(*maps[index, :, :h, :w])
            scores = instance_scores(found, labels[index, :h, :w])
            self._instance_scores.append({"msa": scores["mSA"], "sa50": scores["SA50"]})

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
            out = self.decode_round(embeddings, batch, prompts, click)
            best = out.predicted_best()
            # the first round's loss needs every output; later rounds only the kept one
            if click == 0:
                logits = batched.upscale(self.model, out.low_res)
                chosen = logits[rows, best]
            else:
                chosen = batched.upscale(self.model, out.low_res[rows, best][:, None])[:, 0]
            pred = chosen > self.model.mask_threshold
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
        if self._instance_scores:
            for key in ("msa", "sa50"):
                mean = sum(s[key] for s in self._instance_scores) / len(self._instance_scores)
                self.log(f"{stage}/instance_{key}", float(mean), sync_dist=True)
            self._instance_scores = []

    # ------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        total = int(self.trainer.estimated_stepping_batches) if self.trainer else 0
        named = list(self.model.named_parameters())
        if self.instance_head is not None:  # in the decoder's groups (its learning rate)
            named += [(f"instance_head.{n}", p) for n, p in self.instance_head.named_parameters()]
        optimizer, scheduler = build_optimizer(named, self.optim_config, total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

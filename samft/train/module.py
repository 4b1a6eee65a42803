"""The LightningModule that fine-tunes a full `Sam`.

One image-encoder pass per image, then every prompt of the batch goes through the prompt
encoder and the mask decoder in one batched call (`image_index` maps prompts to images).
Optional correction rounds follow the SAM paper: a click sampled from the error region of
the best mask, with the previous low-res logits fed back as the mask prompt.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from samft.model.lora import apply_lora
from samft.model.registry import build_sam
from samft.model.sam import Sam
from samft.train.clicks import sample_correction_points
from samft.train.losses import SamLoss
from samft.train.metrics import PromptedSegmentationMetrics
from samft.train.optim import OptimConfig, build_optimizer
from samft.train.prompt_groups import group_prompts
from samft.weights import load_sam

ENCODER_MODES = ("frozen", "lora", "full")


@dataclass
class ModelConfig:
    """Which SAM to start from (Hydra group `model`)."""

    variant: str = "vit_b"
    checkpoint: str | None = None
    image_size: int | None = None
    activation_checkpointing: bool = False
    compile: bool | str = False  # torch.compile encoder and decoder; a string names the backend


@dataclass
class FinetuneConfig:
    """What is trained (Hydra group `finetune`): encoder frozen, LoRA-adapted or full."""

    image_encoder: str = "frozen"
    prompt_encoder: bool = True
    mask_decoder: bool = True
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["qkv"])

    def __post_init__(self) -> None:
        if self.image_encoder not in ENCODER_MODES:
            raise ValueError(
                f"finetune.image_encoder must be one of {ENCODER_MODES}, got '{self.image_encoder}'"
            )


@dataclass
class InteractiveConfig:
    """How prompts are iterated in training and validation (Hydra group `interactive`).

    `multimask_output` for the first prompt: `auto` answers a single positive point (the
    ambiguous prompt) with the three multimask outputs and any other prompt with the
    single-mask output, as the SAM paper trains and as users call the predictor; `true` or
    `false` force one kind. Later rounds always use the single-mask output.

    `correction_rounds` add one click each from the error region of the best mask;
    `mask_only_rounds` then feed back the previous mask with no new point (the paper uses
    8 and 2). `loss_rounds` says which rounds' losses are trained: `all`, `first` or `last`.
    Validation simulates `max(val_clicks)` centre clicks and reports each listed count.
    """

    multimask_output: bool | str = "auto"
    correction_rounds: int = 0
    mask_only_rounds: int = 0
    click_mode: str = "random"
    loss_rounds: str = "all"
    val_clicks: list[int] = field(default_factory=lambda: [1, 3, 5])

    def __post_init__(self) -> None:
        if self.loss_rounds not in ("all", "first", "last"):
            raise ValueError(
                f"interactive.loss_rounds must be all, first or last, got '{self.loss_rounds}'"
            )
        if self.multimask_output not in (True, False, "auto"):
            raise ValueError(
                "interactive.multimask_output must be true, false or auto, "
                f"got '{self.multimask_output}'"
            )
        if self.correction_rounds < 0 or self.mask_only_rounds < 0:
            raise ValueError("interactive rounds must be >= 0")


def _as_config(cls: type, value: Any, group: str) -> Any:
    """Build a config dataclass from a dict, naming the group on unknown keys."""
    if isinstance(value, cls):
        return value
    value = dict(value or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in config group '{group}'; known keys: {sorted(known)}"
        )
    return cls(**value)


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
        loss: dict | None = None,
        optim: dict | OptimConfig | None = None,
    ) -> None:
        super().__init__()
        self.model_config = _as_config(ModelConfig, model, "model")
        self.finetune_config = _as_config(FinetuneConfig, finetune, "finetune")
        self.interactive_config = _as_config(InteractiveConfig, interactive, "interactive")
        self.optim_config = _as_config(OptimConfig, optim, "optim")
        self.save_hyperparameters(
            {
                "model": dataclasses.asdict(self.model_config),
                "finetune": dataclasses.asdict(self.finetune_config),
                "interactive": dataclasses.asdict(self.interactive_config),
                "loss": dict(loss or {}),
                "optim": dataclasses.asdict(self.optim_config),
            }
        )
        self.model: Sam = self._build_model().train()
        self._set_trainable()
        self.loss_fn = SamLoss(**(loss or {}))
        self.val_metrics = PromptedSegmentationMetrics(
            max_click_round=max(self.interactive_config.val_clicks, default=0)
        )
        self.overlay_batch: dict[str, Any] | None = None

    # ----------------------------------------------------------------- set-up
    def _build_model(self) -> Sam:
        cfg = self.model_config
        if cfg.checkpoint:
            sam = load_sam(
                cfg.checkpoint,
                variant=cfg.variant,
                image_size=cfg.image_size,
                activation_checkpointing=cfg.activation_checkpointing,
            )
        else:
            sam = build_sam(
                cfg.variant,
                image_size=cfg.image_size,
                activation_checkpointing=cfg.activation_checkpointing,
            )
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

    @property
    def encoder_is_trained(self) -> bool:
        return self.finetune_config.image_encoder != "frozen"

    # ------------------------------------------------------------- forward parts
    def encode_images(self, images: list[Tensor]) -> Tensor:
        """B images (3 x h x w, uint8, resized) -> B x C x h' x w' embeddings.

        Normalisation and padding happen here, in `Sam.preprocess`, exactly as at
        inference. A frozen encoder runs without autograd so it builds no graph.
        """
        x = torch.cat([self.model.preprocess(img[None].float()) for img in images])
        if self.encoder_is_trained:
            return self.model.image_encoder(x)
        with torch.no_grad():
            return self.model.image_encoder(x)

    def batch_embeddings(self, batch: dict[str, Any]) -> Tensor:
        """B x C x h' x w': the batch's cached embeddings (`samft.cache`) when it carries
        them, else the encoder's output for its images."""
        cached = batch.get("embeddings")
        if cached is not None:
            return cached.to(self.model.pixel_mean.dtype)
        return self.encode_images(batch["images"])

    def dense_embeddings(self, mask_inputs: Tensor, has_mask_input: Tensor) -> Tensor:
        """P x C x h' x w': the mask prompt's embedding where given, `no_mask_embed` elsewhere."""
        pe = self.model.prompt_encoder
        h, w = pe.image_embedding_size
        num = has_mask_input.shape[0]
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(num, -1, h, w)
        if has_mask_input.any():
            dense = dense.clone()
            dense[has_mask_input] = pe.mask_downscaling(mask_inputs[has_mask_input])
        return dense

    def decode(
        self,
        embeddings: Tensor,
        image_index: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_inputs: Tensor,
        has_mask_input: Tensor,
        multimask_output: bool | str,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """All P prompts, batched -> every output mask, low-res logits P x 4 x s x s, their
        IoU predictions P x 4, and which outputs answer each prompt (P x 4 bool).

        Rows are grouped by token layout (`group_prompts`) so each prompt is embedded exactly
        as the official predictor embeds it; each group is one decoder call over all images.
        """
        pe = self.model.prompt_encoder
        dense = self.dense_embeddings(mask_inputs, has_mask_input)
        image_pe = pe.get_dense_pe()
        low_res = iou_pred = None
        for group in group_prompts(point_coords, point_labels):
            sparse, _ = pe(points=group.points, boxes=group.boxes, masks=None)
            masks, scores = self.model.mask_decoder.predict_masks(
                embeddings, image_pe, sparse, dense[group.index], image_index[group.index]
            )
            if low_res is None:
                low_res = masks.new_empty((point_labels.shape[0], *masks.shape[1:]))
                iou_pred = scores.new_empty((point_labels.shape[0], scores.shape[1]))
            low_res = low_res.index_copy(0, group.index, masks)
            iou_pred = iou_pred.index_copy(0, group.index, scores)
        return low_res, iou_pred, self.answering_outputs(point_labels, multimask_output)

    @staticmethod
    def answering_outputs(point_labels: Tensor, multimask_output: bool | str) -> Tensor:
        """P x 4 bool: output 0 (single mask) or outputs 1..3 (multimask) for each prompt."""
        if multimask_output == "auto":
            positives = (point_labels == 1).sum(dim=1)
            others = ((point_labels != 1) & (point_labels != -1)).sum(dim=1)
            ambiguous = (positives == 1) & (others == 0)
        else:
            ambiguous = torch.full_like(point_labels[:, 0], bool(multimask_output), dtype=bool)
        return torch.cat([~ambiguous[:, None], ambiguous[:, None].expand(-1, 3)], dim=1)

    def upscale(self, low_res: Tensor) -> Tensor:
        """Low-res logits -> logits on the padded input square (first step of postprocess)."""
        size = self.model.image_size
        return F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)

    @staticmethod
    def batch_prompts(batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The first round's prompts: (coords, labels, mask_inputs, has_mask)."""
        return (
            batch["point_coords"],
            batch["point_labels"],
            batch["mask_inputs"],
            batch["has_mask_input"],
        )

    def next_prompts(
        self,
        prompts: tuple[Tensor, Tensor, Tensor, Tensor],
        best_low_res: Tensor,
        pred: Tensor | None,
        gt: Tensor,
        valid: Tensor,
        click_mode: str = "random",
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The prompts of the next round: the chosen low-res mask (P x s x s) fed back as
        the mask prompt and, given the thresholded prediction, one correction click from
        its error region appended. `prompts` is (coords, labels, mask_inputs, has_mask)."""
        coords, labels, _, has_mask = prompts
        if pred is not None:
            new_coords, new_labels = sample_correction_points(pred, gt, valid, mode=click_mode)
            coords = torch.cat([coords, new_coords.to(coords.dtype)], dim=1)
            labels = torch.cat([labels, new_labels.to(labels.dtype)], dim=1)
        return coords, labels, best_low_res[:, None], torch.ones_like(has_mask)

    def valid_region(self, batch: dict[str, Tensor]) -> Tensor:
        """P x S x S, True inside each object's image (False on the padding)."""
        size = self.model.image_size
        sizes = batch["input_sizes"][batch["object_image_index"]]  # P x 2 (h, w)
        rows = torch.arange(size, device=sizes.device)
        inside_h = rows[None, :] < sizes[:, :1]
        inside_w = rows[None, :] < sizes[:, 1:]
        return inside_h[:, :, None] & inside_w[:, None, :]

    def num_objects_per_rank(self, count: int) -> float:
        """Objects summed over ranks / world size: with DDP's gradient averaging this makes
        the loss a mean over all objects of the global batch."""
        total = torch.tensor(float(count), device=self.device)
        trainer = self._trainer  # None when the module is used without a Trainer
        if trainer is not None and trainer.world_size > 1:
            total = trainer.strategy.reduce(total, reduce_op="sum") / trainer.world_size
        return max(float(total), 1.0)

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        cfg = self.interactive_config
        embeddings = self.batch_embeddings(batch)
        gt = batch["gt_masks"]
        valid = self.valid_region(batch)
        num_objects = self.num_objects_per_rank(gt.shape[0])
        prompts = self.batch_prompts(batch)
        rows = torch.arange(gt.shape[0], device=gt.device)

        num_rounds = 1 + cfg.correction_rounds + cfg.mask_only_rounds
        counted = {"all": range(num_rounds), "first": [0], "last": [num_rounds - 1]}
        counted = set(counted[cfg.loss_rounds])
        totals: dict[str, Tensor] = {}
        for round_index in range(num_rounds):
            low_res, iou_pred, eligible = self.decode(
                embeddings,
                batch["object_image_index"],
                *prompts,
                multimask_output=cfg.multimask_output if round_index == 0 else False,
            )
            logits = self.upscale(low_res)
            out = self.loss_fn(logits, iou_pred, gt, valid, num_objects, eligible=eligible)
            if round_index in counted:
                for key in ("total", "focal", "dice", "iou"):
                    totals[key] = totals.get(key, 0.0) + getattr(out, key) / len(counted)
            if round_index == num_rounds - 1:
                break
            best = out.best_index
            pred = None
            if round_index < cfg.correction_rounds:
                pred = logits[rows, best].detach() > self.model.mask_threshold
            prompts = self.next_prompts(
                prompts, low_res[rows, best].detach(), pred, gt, valid, cfg.click_mode
            )

        batch_size = len(batch["images"])
        for key, value in totals.items():
            name = "train/loss" if key == "total" else f"train/loss_{key}"
            self.log(name, value, prog_bar=key == "total", batch_size=batch_size)
        return totals["total"]

    # -------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate_batch(batch, batch_idx, self.val_metrics, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate_batch(batch, batch_idx, self.val_metrics, "test")

    @torch.no_grad()
    def _evaluate_batch(self, batch, batch_idx, metrics, stage: str) -> None:
        """First prompt, then simulated centre clicks; the mask kept at each step is the
        one the IoU head scores highest, as at inference."""
        cfg = self.interactive_config
        embeddings = self.batch_embeddings(batch)
        gt = batch["gt_masks"]
        valid = self.valid_region(batch)
        rows = torch.arange(gt.shape[0], device=gt.device)
        prompts = self.batch_prompts(batch)
        update = {
            "gt_masks": gt,
            "valid": valid,
            "prompt_types": batch["prompt_types"],
            "object_areas": batch.get("object_areas"),
        }
        max_clicks = max(cfg.val_clicks, default=0)
        for click in range(max_clicks + 1):
            low_res, iou_pred, eligible = self.decode(
                embeddings,
                batch["object_image_index"],
                *prompts,
                multimask_output=cfg.multimask_output if click == 0 else False,
            )
            logits = self.upscale(low_res)
            best = iou_pred.masked_fill(~eligible, float("-inf")).argmax(dim=1)
            pred = logits[rows, best] > self.model.mask_threshold
            if click == 0:
                loss = self.loss_fn(
                    logits, iou_pred, gt, valid, float(gt.shape[0]), eligible=eligible
                )
                self.log(
                    f"{stage}/loss", loss.total, batch_size=len(batch["images"]), sync_dist=True
                )
                if batch_idx == 0:
                    self.overlay_batch = {"batch": batch, "pred_masks": pred.cpu()}
            if click == 0 or click in cfg.val_clicks:
                metrics.update(
                    pred_masks=pred,
                    iou_predictions=iou_pred[rows, best],
                    click_round=click,
                    **update,
                )
            if click == max_clicks:
                break
            prompts = self.next_prompts(prompts, low_res[rows, best], pred, gt, valid, "center")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "test")

    def _log_metrics(self, metrics: PromptedSegmentationMetrics, stage: str) -> None:
        values = metrics.compute()
        self.log_dict({f"{stage}/{k}": v.float() for k, v in values.items()})
        metrics.reset()

    # ------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        total = int(self.trainer.estimated_stepping_batches) if self.trainer else 0
        optimizer, scheduler = build_optimizer(
            list(self.model.named_parameters()), self.optim_config, total
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

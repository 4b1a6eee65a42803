"""Score SAM checkpoints on a dataset: mIoU and Dice per prompt type, click and object size.

Every usable object of every image is prompted once with EACH prompt type (one positive
point, several points, a box), drawn by the data pipeline's `PromptSampler` from a seed
per (image, prompt type), so two checkpoints and two runs see the very same prompts. The
batches then go through `SamFineTuner`'s own test step (`trainer.test`): the first
prompt, then simulated centre correction clicks, scored by
`PromptedSegmentationMetrics`. No decoder loop or pre/post-processing lives here.

Any checkpoint `samft.weights` reads works: Meta's `.pth`, a samft Lightning
checkpoint (LoRA folded in), or an export.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from samft.data.collate import collate_samples
from samft.data.dataset import SamDataset
from samft.data.prompts import PromptSampler, stable_seed
from samft.data.readers import build_reader
from samft.evaluate.report import CheckpointSummary, describe_checkpoint
from samft.io.progress import TestProgress, off_terminal
from samft.model.prompts import pad_tokens
from samft.model.registry import get_hyper_params
from samft.train.module import SamFineTuner

log = logging.getLogger(__name__)


DEFAULT_PROMPTS: dict[str, dict[str, Any]] = {
    "one_point": {"point_prob": 1.0, "box_prob": 0.0, "num_points": [1, 1]},
    "points": {"point_prob": 1.0, "box_prob": 0.0, "num_points": [3, 3], "num_negatives": [1, 1]},
    "box": {"point_prob": 0.0, "box_prob": 1.0, "box_noise_std": 0.0},
}


DEFAULT_CLICKS = (1, 3, 5)


class EvaluationDataset(Dataset):
    """Each image with all its objects, every object once per prompt type.

    Wraps a deterministic `SamDataset` (no augmentation, all usable objects, input frame)
    and replaces its prompts: for prompt type `name` the objects of an image are prompted
    with `samplers[name]` and a generator seeded by `stable_seed(seed, "<id>/<name>")`.
    A sample has the `SamDataset` layout, so `collate_samples` batches it.
    """

    def __init__(
        self, base: SamDataset, samplers: Mapping[str, PromptSampler], seed: int = 0
    ) -> None:
        if not samplers:
            raise ValueError("EvaluationDataset: no prompt type to evaluate (samplers is empty)")
        self.base = base
        self.samplers = dict(samplers)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.base[index]
        masks = sample["masks"].numpy()  # n x h x w bool, input frame
        prompts = []
        for name, sampler in self.samplers.items():
            rng = np.random.default_rng(stable_seed(self.seed, f"{sample['image_id']}/{name}"))
            prompts += [sampler.sample(mask, rng) for mask in masks]
        copies = len(self.samplers)
        coords, labels = pad_tokens([p.coords for p in prompts], [p.labels for p in prompts])
        low = sample["mask_inputs"].shape[-1]
        return {
            **sample,
            "masks": sample["masks"].repeat(copies, 1, 1),
            "point_coords": coords,
            "point_labels": labels,
            "prompt_types": torch.tensor([p.type for p in prompts], dtype=torch.long),
            "mask_inputs": torch.zeros(0, 1, low, low),
            "has_mask_input": torch.zeros(len(prompts), dtype=torch.bool),
            "object_areas": sample["object_areas"].repeat(copies),
            "category_ids": sample["category_ids"].repeat(copies),
        }


def build_samplers(prompts: Mapping[str, Mapping[str, Any] | None] | None) -> dict:
    """PromptSamplers by prompt-type name; a None entry leaves that type out."""
    prompts = DEFAULT_PROMPTS if prompts is None else prompts
    samplers = {}
    for name, options in prompts.items():
        if options is None:
            continue
        try:
            samplers[str(name)] = PromptSampler(**dict(options))
        except TypeError as err:
            raise ValueError(f"prompts.{name}: {err}") from None
    if not samplers:
        raise ValueError("prompts: every prompt type is disabled; enable at least one")
    return samplers


def build_evaluation_dataset(
    spec: Mapping[str, Any],
    image_size: int,
    samplers: Mapping[str, PromptSampler],
    seed: int = 0,
    min_area: float = 16,
    max_area_fraction: float = 0.9,
    max_objects_per_image: int | None = None,
    max_images: int | None = None,
    name: str = "data",
    resize_interpolation: str = "bilinear",
) -> EvaluationDataset:
    """The evaluation dataset of a dataset spec (`{"format": "coco", ...}`, see
    `samft.data.readers.build_reader`) at the model's input size."""
    base = SamDataset(
        build_reader(spec, name),
        image_size=image_size,
        resize_interpolation=resize_interpolation,
        prompts=next(iter(samplers.values())),
        augment=None,
        max_objects_per_image=max_objects_per_image,
        min_area=min_area,
        max_area_fraction=max_area_fraction,
        seed=seed,
        deterministic=True,
    )
    if max_images is not None:
        base.items = base.items[: int(max_images)]
    if len(base) == 0:
        raise ValueError(f"{name}: no image has an object to evaluate (skipped: {base.skipped})")
    return EvaluationDataset(base, samplers, seed)


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset_spec: Mapping[str, Any],
    prompts: Mapping[str, Mapping[str, Any] | None] | None = None,
    clicks: Sequence[int] = DEFAULT_CLICKS,
    multimask_output: bool | str = True,
    seed: int = 0,
    min_area: float = 16,
    max_area_fraction: float = 0.9,
    max_objects_per_image: int | None = None,
    max_images: int | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    variant: str | None = None,
    trainer_options: Mapping[str, Any] | None = None,
) -> CheckpointSummary:
    """Evaluate one checkpoint; returns its summary with `metrics` filled.

    Metric names are those of `PromptedSegmentationMetrics` (`miou`, `miou/box`,
    `miou/click_3`, `miou/small`, `iou_head_mae`, ...) plus `loss` (the training loss
    of the first prompt). Round-0 means (`miou`, `dice`, sizes) and click means average
    over every prompt type. `num_objects` counts objects, `num_prompts` objects x types.
    """
    summary = describe_checkpoint(checkpoint, variant)
    dataset = build_evaluation_dataset(
        dataset_spec,
        summary.image_size,
        build_samplers(prompts),
        seed=seed,
        min_area=min_area,
        max_area_fraction=max_area_fraction,
        max_objects_per_image=max_objects_per_image,
        max_images=max_images,
        resize_interpolation=get_hyper_params(summary.variant).resize_interpolation,
    )
    module = SamFineTuner(
        model={
            "variant": summary.variant,
            "checkpoint": summary.path,
            "image_size": summary.image_size,
        },
        finetune={"image_encoder": "frozen"},
        interactive={"multimask_output": multimask_output, "val_clicks": list(clicks)},
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_samples,
    )
    options = {
        "accelerator": "auto",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": False,
    }
    options.update(dict(trainer_options or {}))
    if off_terminal():  # a log file, CI: progress lines instead of a bar's carriage returns
        options["enable_progress_bar"] = False
        options["callbacks"] = [TestProgress(f"eval {summary.path}", len(dataset), batch_size)]
    trainer = L.Trainer(**options)
    log.info(
        "evaluating %s (%s, %s, %d px) on %d images",
        summary.path,
        summary.kind,
        summary.variant,
        summary.image_size,
        len(dataset),
    )
    results = trainer.test(module, dataloaders=loader, verbose=False)
    values = results[0] if results else {}
    metrics = {key.removeprefix("test/"): float(value) for key, value in values.items()}
    # the metric counts (object, prompt type) pairs; every object has each type once
    if "num_objects" in metrics:
        metrics["num_prompts"] = metrics["num_objects"]
        metrics["num_objects"] = metrics["num_prompts"] / len(dataset.samplers)
    summary.metrics = dict(sorted(metrics.items()))
    return summary

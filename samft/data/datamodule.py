"""Train / val / test loaders for SAM fine-tuning, from plain arguments.

A dataset spec is a mapping naming the format and the reader's arguments, e.g.
`{"format": "coco", "annotations": "ann/train.json", "images": "images/"}`,
`{"format": "sa1b", "root": "sa_000000/"}` or
`{"format": "folder", "images": "img/", "masks": "ann/", "mask_type": "semantic"}`
(see `samft.data.readers`); a ready `Reader` works too. Distributed sampling is
Lightning's own: it wraps these loaders in a DistributedSampler when training on
several devices.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import lightning as L
import torch
from torch.utils.data import DataLoader

from samft.bounds import AT_LEAST_ONE, NON_NEGATIVE, Bounds, check_bounds
from samft.data.augment import AugmentSpec, build_augment
from samft.data.cache import EmbeddingCache, flip_probabilities, orientations_for
from samft.data.collate import collate_samples
from samft.data.dataset import SamDataset
from samft.data.errors import DataError
from samft.data.prompts import PromptSampler
from samft.data.readers import Reader, build_reader

log = logging.getLogger(__name__)

DatasetSpec = Mapping[str, Any]
SPLITS = ("train", "val", "test")


def as_prompt_sampler(value: PromptSampler | Mapping[str, Any] | None, name: str) -> PromptSampler:
    """A PromptSampler from itself, a mapping of its fields (as Hydra may pass it) or None."""
    if value is None:
        return PromptSampler()
    if isinstance(value, PromptSampler):
        return value
    if isinstance(value, Mapping):
        fields = {k: v for k, v in value.items() if not str(k).startswith("_")}
        try:
            return PromptSampler(**fields)
        except TypeError as exc:
            raise DataError(f"{name}: {exc}") from exc
    raise DataError(f"{name}: expected a PromptSampler or a mapping, got {type(value).__name__}")


# The allowed ranges of the data module's numeric arguments, checked in this order (None,
# an unset `*max_objects_per_image`, is not checked).
DATA_BOUNDS: dict[str, Bounds] = {
    "batch_size": AT_LEAST_ONE,
    "num_workers": NON_NEGATIVE,
    "automatic_points_per_image": NON_NEGATIVE,
    "min_area": NON_NEGATIVE,
    "image_size": Bounds(16),
    "max_objects_per_image": AT_LEAST_ONE,
    "val_max_objects_per_image": AT_LEAST_ONE,
    "max_area_fraction": Bounds(0, 1, low_open=True),  # (0, 1]
}


class SamDataModule(L.LightningDataModule):
    """Datasets and loaders of one experiment.

    Args:
        train, val, test: dataset specs (see module doc) or None for an absent split.
        image_size: the model's input size S.
        resize_interpolation: the model family's image filter (`Sam.resize_interpolation`).
        batch_size: images per batch (each brings up to `max_objects_per_image` objects).
        num_workers: DataLoader worker processes.
        max_objects_per_image: K objects drawn per image and sample (None: all).
        min_area: smallest object kept, in original pixels (also after augmentation).
        max_area_fraction: largest object kept, as a fraction of the image (paper: 0.9).
        train_augment: albumentations specs (`{"name": "HorizontalFlip", "p": 0.5}`) or
            an `A.Compose`; applied to training images only.
        prompts: prompt sampler of the training split.
        val_prompts: prompt sampler of val and test (default: `prompts`); their prompts are
            seeded per image, identical in every epoch.
        seed: base seed of the deterministic val/test samples.
        val_max_objects_per_image: K for val and test (default: `max_objects_per_image`).
        pin_memory: pin batches in page-locked memory (default: when CUDA is available).
        embedding_cache: an open `EmbeddingCache` for the model being trained (frozen
            encoder): every split then serves cached embeddings instead of images (training
            with the flips of `train_augment`, which must be flips only). Each split is
            checked against the cache when built: a missing or changed image is an error.
        automatic_points_per_image: points drawn anywhere on each training image for
            training the automatic mode, answered by all the image's instances (0: none).
        instance_targets: every split's samples carry their instance id map and the
            instance head's targets (`samft.data.dataset`); set by `samft train` when the
            module has an instance head.
    """

    def __init__(
        self,
        train: DatasetSpec | Reader | None = None,
        val: DatasetSpec | Reader | None = None,
        test: DatasetSpec | Reader | None = None,
        image_size: int = 1024,
        resize_interpolation: str = "bilinear",
        batch_size: int = 2,
        num_workers: int = 0,
        max_objects_per_image: int | None = 16,
        min_area: float = 16,
        max_area_fraction: float = 0.9,
        train_augment: Sequence[AugmentSpec] | A.BaseCompose | None = None,
        prompts: PromptSampler | Mapping[str, Any] | None = None,
        val_prompts: PromptSampler | Mapping[str, Any] | None = None,
        seed: int = 0,
        val_max_objects_per_image: int | None = None,
        pin_memory: bool | None = None,
        embedding_cache: EmbeddingCache | None = None,
        automatic_points_per_image: int = 0,
        instance_targets: bool = False,
    ) -> None:
        super().__init__()
        numbers = {
            "batch_size": batch_size,
            "num_workers": num_workers,
            "automatic_points_per_image": automatic_points_per_image,
            "min_area": min_area,
            "image_size": image_size,
            "max_objects_per_image": max_objects_per_image,
            "val_max_objects_per_image": val_max_objects_per_image,
            "max_area_fraction": max_area_fraction,
        }
        check_bounds(numbers, DATA_BOUNDS, "data", error=DataError)
        self.specs = {"train": train, "val": val, "test": test}
        self.image_size = int(image_size)
        self.resize_interpolation = resize_interpolation
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.max_objects_per_image = max_objects_per_image
        self.val_max_objects_per_image = (
            val_max_objects_per_image
            if val_max_objects_per_image is not None
            else max_objects_per_image
        )
        self.min_area = min_area
        self.max_area_fraction = max_area_fraction
        self.augment = build_augment(train_augment)
        self.prompts = as_prompt_sampler(prompts, "data.prompts")
        self.val_prompts = (
            as_prompt_sampler(val_prompts, "data.val_prompts")
            if val_prompts is not None
            else self.prompts
        )
        self.seed = int(seed)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.embedding_cache = embedding_cache
        self.automatic_points_per_image = int(automatic_points_per_image)
        self.instance_targets = bool(instance_targets)
        self.datasets: dict[str, SamDataset] = {}
        if embedding_cache is not None:
            reason = flip_probabilities(self.augment)[1]
            if reason:
                raise DataError(f"data: the embedding cache cannot serve this training: {reason}")

    def build_dataset(self, split: str) -> SamDataset:
        """The dataset of one split ("train", "val" or "test"), built on first use."""
        if split not in SPLITS:
            raise DataError(f"split = {split!r}; expected one of {SPLITS}")
        if split in self.datasets:
            return self.datasets[split]
        spec = self.specs[split]
        if spec is None:
            raise DataError(f"data.{split} is not set, so there is no {split} dataset")
        train = split == "train"
        dataset = SamDataset(
            build_reader(spec, f"data.{split}"),
            image_size=self.image_size,
            resize_interpolation=self.resize_interpolation,
            prompts=self.prompts if train else self.val_prompts,
            augment=self.augment if train else None,
            max_objects_per_image=(
                self.max_objects_per_image if train else self.val_max_objects_per_image
            ),
            min_area=self.min_area,
            max_area_fraction=self.max_area_fraction,
            seed=self.seed,
            deterministic=not train,
            automatic_points=self.automatic_points_per_image if train else 0,
            instance_targets=self.instance_targets,
        )
        if len(dataset) == 0:
            raise DataError(
                f"data.{split}: no image has a usable object (skipped: {dict(dataset.skipped)})"
            )
        objects = sum(len(usable) for _, usable in dataset.items)
        log.info(
            "data.%s: %d images, %d objects used; skipped: %s",
            split,
            len(dataset),
            objects,
            dict(dataset.skipped) or "nothing",
        )
        if self.embedding_cache is not None:
            flips = flip_probabilities(self.augment)[0] if train else (0.0, 0.0)
            paths = [dataset.record(i).path for i in range(len(dataset))]
            self.embedding_cache.check_covers(paths, orientations_for(flips))
            dataset.use_embeddings(self.embedding_cache, flips)
            log.info("data.%s: image embeddings read from %s", split, self.embedding_cache.root)
        self.datasets[split] = dataset
        return dataset

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}
        for split in wanted.get(stage or "", SPLITS):
            if self.specs[split] is not None:
                self.build_dataset(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.build_dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=collate_samples,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.specs["val"] is None:
            return []  # Lightning skips validation when there is no loader
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

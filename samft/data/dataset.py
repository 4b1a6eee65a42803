"""One training sample per image: augmented pixels, K object masks and one prompt each.

The dataset turns a reader's index into samples in the model's input frame (longest side =
`image_size`, or SAM 2's `image_size` square; not padded, not normalised) following the
batch contract of `samft.data.collate`. Objects are filtered once, at construction, and
what was skipped is kept in `skipped` for the statistics.

Seeding: in training every call draws fresh randomness from torch's generator, which
Lightning seeds per worker and epoch; with `deterministic=True` (validation, test) a
sample's randomness comes from `stable_seed(seed, image_id)` alone, so the objects and
prompts are the same in every epoch, worker and process.

Cached embeddings (`use_embeddings`): the albumentations pipeline is replaced by flips drawn
here, and each sample carries the embedding of exactly the orientation it shows.

Automatic-mode points (`automatic_points > 0`): each sample also carries that many points
drawn uniformly over the image and the masks of all its instances (`samft.data.automatic`);
they are drawn after the prompts, so the prompts stay those of a dataset without them.

Instance-head targets (`instance_targets=True`): each sample also carries the id map of all
its instances (`instance_labels`, `h x w` int32, painted smaller over larger) and the head's
three target maps computed from it (`instance_targets`, `3 x h x w` float32,
`samft.data.instance_targets`), both in the input frame after augmentation and resize, so
they always match the pixels (and the cached embedding's orientation) the model sees.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from samft.data.augment import apply_augment
from samft.data.automatic import instance_indices, sample_image_points
from samft.data.errors import DataError
from samft.data.instance_targets import instance_targets, paint_instances
from samft.data.objects import SKIP_IMAGE, choose_objects, large_enough, usable_objects
from samft.data.prompts import PromptSampler, stable_seed
from samft.data.readers.base import ImageRecord, Reader
from samft.data.resize import resize_image, resize_masks
from samft.model.prompts import pad_tokens

# Runtime counters (per process): objects lost to augmentation and images whose every
# augmentation attempt lost all objects, so the un-augmented image was used.
AUG_DROPPED = "objects_dropped_by_augmentation"
AUG_FALLBACK = "augmentation_fallbacks"

# How a sample may be flipped when embeddings come from a cache: none, horizontally
# (left-right), vertically (up-down) or both.
ORIENTATIONS = ("none", "h", "v", "hv")


def orient(array: np.ndarray, orientation: str, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Flip `array` (its rows and columns on `axes`) into one of `ORIENTATIONS`."""
    if "h" in orientation:
        array = np.flip(array, axis=axes[1])
    if "v" in orientation:
        array = np.flip(array, axis=axes[0])
    return np.ascontiguousarray(array)


class EmbeddingSource(Protocol):
    """Where cached embeddings come from (`samft.cache.EmbeddingCache`)."""

    def get(self, path: Any, orientation: str) -> torch.Tensor | tuple[torch.Tensor, ...]: ...


class SamDataset(Dataset):
    """SAM training samples from any reader.

    Args:
        reader: a CocoReader, Sa1bReader or FolderReader (or any `Reader`).
        image_size: the model's input size S; images are resized so max(h, w) == S, or to
            S x S for SAM 2.
        resize_interpolation: the model family's image filter ("bilinear": SAM, MobileSAM;
            "area": LiteMedSAM; "bilinear_antialias": SAM 2, to the S x S square, its masks
            and prompts too), see `samft.model.transforms.RESIZE_FILTERS`.
        prompts: how each object's prompt is drawn.
        augment: albumentations pipeline applied before the resize, or None.
        max_objects_per_image: K, objects drawn per sample (None: all).
        min_area: objects smaller than this (original pixels) are skipped, also after
            augmentation.
        max_area_fraction: objects covering more of the image than this are skipped.
        seed: base seed of the deterministic mode.
        deterministic: draw objects, augmentation and prompts from (seed, image id).
        max_augment_tries: augmentations tried before falling back to the plain image
            when every chosen object vanished.
        automatic_points: points per sample for training the automatic mode (0: none).
        instance_targets: give each sample its instance id map and the instance head's
            targets (see the module doc).
    """

    def __init__(
        self,
        reader: Reader,
        image_size: int = 1024,
        resize_interpolation: str = "bilinear",
        prompts: PromptSampler | None = None,
        augment: A.BaseCompose | None = None,
        max_objects_per_image: int | None = 16,
        min_area: float = 16,
        max_area_fraction: float = 0.9,
        seed: int = 0,
        deterministic: bool = False,
        max_augment_tries: int = 3,
        automatic_points: int = 0,
        instance_targets: bool = False,
    ) -> None:
        if image_size <= 0 or image_size % 16:
            raise DataError(f"image_size = {image_size}; expected a positive multiple of 16")
        if max_objects_per_image is not None and max_objects_per_image < 1:
            raise DataError(f"max_objects_per_image = {max_objects_per_image}; expected >= 1")
        if not 0 < max_area_fraction <= 1:
            raise DataError(f"max_area_fraction = {max_area_fraction}; expected in (0, 1]")
        if automatic_points < 0:
            raise DataError(f"automatic_points = {automatic_points}; expected >= 0")
        self.reader = reader
        self.image_size = int(image_size)
        self.resize_interpolation = resize_interpolation
        self.prompts = prompts if prompts is not None else PromptSampler()
        self.augment = augment
        self.max_objects = max_objects_per_image
        self.min_area = float(min_area)
        self.max_area_fraction = float(max_area_fraction)
        self.seed = int(seed)
        self.deterministic = deterministic
        self.max_augment_tries = max(int(max_augment_tries), 1)
        self.automatic_points = int(automatic_points)
        self.instance_targets = bool(instance_targets)
        self.skipped: Counter[str] = Counter()
        self.runtime: Counter[str] = Counter()
        self.embeddings: EmbeddingSource | None = None
        self.flip_probs = (0.0, 0.0)
        # (record index, usable object indices) for every image that keeps an object
        self.items: list[tuple[int, list[int]]] = []
        for r, record in enumerate(reader.records):
            usable = usable_objects(record, self.min_area, self.max_area_fraction, self.skipped)
            if usable:
                self.items.append((r, usable))
            else:
                self.skipped[SKIP_IMAGE] += 1

    def __len__(self) -> int:
        return len(self.items)

    def record(self, index: int) -> ImageRecord:
        return self.reader.records[self.items[index][0]]

    def rng(self, index: int) -> np.random.Generator:
        """The generator of sample `index` (see the module doc for the seeding rule)."""
        if self.deterministic:
            return np.random.default_rng(stable_seed(self.seed, self.record(index).image_id))
        draw = int(torch.randint(0, 2**62, ()).item())
        return np.random.default_rng([self.seed, draw, index])

    def use_embeddings(self, source: EmbeddingSource, flip_probs: tuple[float, float]) -> None:
        """Serve cached embeddings: samples get `embedding` (`C x h x w`, or SAM 2's three
        levels) and are flipped with probabilities `flip_probs` (horizontal, vertical)
        instead of `augment`."""
        self.embeddings = source
        self.flip_probs = (float(flip_probs[0]), float(flip_probs[1]))

    def _draw_orientation(self, rng: np.random.Generator) -> str:
        flip_h, flip_v = (bool(rng.random() < p) for p in self.flip_probs)
        return {(0, 0): "none", (1, 0): "h", (0, 1): "v", (1, 1): "hv"}[(flip_h, flip_v)]

    def _augment(
        self, image: np.ndarray, masks: np.ndarray, prompted: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Augmented image and all N masks, and which of them are still large enough
        (N bool). An augmentation counts only when a `prompted` (N bool) mask survives."""
        if self.augment is None:
            return image, masks, np.ones(len(masks), dtype=bool)
        for _ in range(self.max_augment_tries):
            new_image, new_masks = apply_augment(self.augment, image, masks, rng)
            keep = large_enough(new_masks, self.min_area)
            if (keep & prompted).any():
                self.runtime[AUG_DROPPED] += int((~keep & prompted).sum())
                return new_image, new_masks, keep
        self.runtime[AUG_FALLBACK] += 1
        return image, masks, np.ones(len(masks), dtype=bool)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record_index, usable = self.items[index]
        record = self.reader.records[record_index]
        rng = self.rng(index)
        chosen = choose_objects(usable, self.max_objects, rng)
        automatic = self.automatic_points > 0
        instances = instance_indices(record) if automatic or self.instance_targets else []
        loaded_ids = sorted(set(chosen) | set(instances))
        loaded = self.reader.load(record, loaded_ids)
        prompted = np.isin(loaded_ids, chosen)
        orientation = None
        if self.embeddings is None:
            image, all_masks, kept = self._augment(loaded.image, loaded.masks, prompted, rng)
        else:
            orientation = self._draw_orientation(rng)
            image, all_masks = (
                orient(loaded.image, orientation),
                orient(loaded.masks, orientation, (1, 2)),
            )
            kept = np.ones(len(all_masks), dtype=bool)
        is_prompted = prompted & kept
        is_instance = np.isin(loaded_ids, instances) & all_masks.any(axis=(1, 2))
        chosen = [c for c, k in zip(loaded_ids, is_prompted, strict=True) if k]

        original_size = image.shape[:2]
        areas = all_masks[is_prompted].reshape(len(chosen), -1).sum(axis=1).astype(np.float32)
        image = resize_image(image, self.image_size, self.resize_interpolation)
        used = is_prompted | is_instance  # each mask resized once, prompted or instance
        resized = resize_masks(all_masks[used], self.image_size, self.resize_interpolation)
        masks, instance_masks = resized[is_prompted[used]], resized[is_instance[used]]

        prompts = [self.prompts.sample(mask, rng) for mask in masks]
        coords, labels = pad_tokens([p.coords for p in prompts], [p.labels for p in prompts])
        low = self.image_size // 4
        mask_inputs = [p.mask_input for p in prompts if p.mask_input is not None]
        sample = {
            "image_id": record.image_id,
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "input_size": torch.tensor(image.shape[:2], dtype=torch.long),
            "original_size": torch.tensor(original_size, dtype=torch.long),
            "masks": torch.from_numpy(masks),
            "point_coords": coords,
            "point_labels": labels,
            "prompt_types": torch.tensor([p.type for p in prompts], dtype=torch.long),
            "mask_inputs": torch.from_numpy(
                np.stack(mask_inputs)[:, None]
                if mask_inputs
                else np.zeros((0, 1, low, low), dtype=np.float32)
            ),
            "has_mask_input": torch.tensor([p.mask_input is not None for p in prompts]),
            "object_areas": torch.from_numpy(areas),
            "category_ids": torch.tensor(
                [record.objects[c].category_id for c in chosen], dtype=torch.long
            ),
        }
        if automatic:
            h, w = image.shape[:2]
            points = sample_image_points(h, w, self.automatic_points, rng)
            sample["automatic_points"] = torch.from_numpy(points)
            sample["instance_masks"] = torch.from_numpy(instance_masks)
        if self.instance_targets:
            labels = paint_instances(instance_masks)
            sample["instance_labels"] = torch.from_numpy(labels)
            sample["instance_targets"] = torch.from_numpy(instance_targets(labels))
        if self.embeddings is not None:
            sample["embedding"] = self.embeddings.get(record.path, orientation)
        return sample

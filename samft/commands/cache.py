"""`python -m samft cache`: compute the frozen encoder's image embeddings once, for training.

It composes the same config as `samft train` (`+experiment=...` and the same overrides), so
the cache holds exactly what that training run will ask for: every image of the train split
in each orientation its flips can show, and the val / test images as they are.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from samft.commands.common import build_datamodule, build_module, prepare_dataset
from samft.data.cache import (
    CacheError,
    CacheJob,
    build_cache,
    cache_key,
    flip_probabilities,
    orientations_for,
    why_not_cached,
)
from samft.data.images import allow_image_pixels
from samft.model.batched import encode_images
from samft.model.device import resolve_device

log = logging.getLogger(__name__)


def cache_embeddings(cfg: DictConfig) -> dict[str, int]:
    """Build or complete the cache at `cfg.cache.dir`; returns the counts of `build_cache`."""
    if not cfg.cache.get("dir"):
        raise CacheError("cache.dir is not set: say where the embeddings go, e.g. cache.dir=cache")
    L.seed_everything(cfg.seed, workers=True)  # as `samft train`: same weights if from scratch
    prepare_dataset(cfg)
    datamodule = build_datamodule(cfg)
    reason = why_not_cached(cfg.finetune.image_encoder, datamodule.augment)
    if reason:
        raise CacheError(f"training with this config cannot use an embedding cache: {reason}")
    sam = build_module(cfg).model
    device = resolve_device(cfg.cache.device)
    sam = sam.to(device).eval()
    train_orientations = tuple(orientations_for(flip_probabilities(datamodule.augment)[0]))

    wanted: dict[Path, set[str]] = {}
    readers = {}
    for split in ("train", "val", "test"):
        if datamodule.specs[split] is None:
            continue
        dataset = datamodule.build_dataset(split)
        orientations = train_orientations if split == "train" else ("none",)
        for index in range(len(dataset)):
            record = dataset.record(index)
            wanted.setdefault(record.path, set()).update(orientations)
            readers[record.path] = (dataset.reader, record)
    jobs = [CacheJob(path, tuple(sorted(o)), _loader(*readers[path])) for path, o in wanted.items()]
    counts = build_cache(
        cfg.cache.dir,
        cache_key(sam, cfg.cache.get("image_stamp", "mtime")),
        jobs,
        embed=lambda images: sam.to_cached(
            encode_images(sam, [img.to(sam.device) for img in images])
        ),
        batch_size=int(cfg.cache.batch_size),
        shard_mb=float(cfg.cache.shard_mb),
    )
    log.info(
        "cache %s: %d embeddings computed, %d reused, %d in total",
        cfg.cache.dir,
        counts["computed"],
        counts["reused"],
        counts["entries"],
    )
    return counts


def _loader(reader, record):
    return lambda: reader.load_image(record)


@hydra.main(version_base="1.3", config_path="pkg://samft.conf", config_name="cache")
def main(cfg: DictConfig) -> None:
    allow_image_pixels(cfg.max_image_pixels)
    OmegaConf.resolve(cfg)
    cache_embeddings(cfg)

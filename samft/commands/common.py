"""Building objects from a composed config: the few `instantiate` calls at the edges."""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from samft.commands.quiet import without_wandb_anonymous
from samft.commands.schema import check_group
from samft.data.augment import build_augment
from samft.data.cache import EmbeddingCache, cache_key, why_not_cached
from samft.model.registry import get_hyper_params
from samft.train.module import SamFineTuner

log = logging.getLogger(__name__)


def to_plain(cfg: Any) -> Any:
    """A DictConfig as plain dicts/lists, resolved (the core classes take plain values)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def prepare_dataset(cfg: DictConfig) -> None:
    """Run the config's `generate_dataset` callable (the demo writes its data) if any."""
    if cfg.get("generate_dataset") is not None:
        instantiate(cfg.generate_dataset)


def build_module(cfg: DictConfig) -> SamFineTuner:
    return SamFineTuner(
        model=to_plain(cfg.model),
        finetune=to_plain(cfg.finetune),
        interactive=to_plain(cfg.interactive),
        loss=to_plain(cfg.loss),
        optim=to_plain(cfg.optim),
        instance_head=to_plain(cfg.get("instance_head")),
    )


def build_datamodule(cfg: DictConfig, embedding_cache: EmbeddingCache | None = None):
    """The datamodule of `cfg.data`, resizing images with the model family's filter; its
    samples carry the instance head's targets when the config enables the head."""
    check_group(cfg.prompts, "prompts")
    check_group(cfg.data, "data")
    head = cfg.get("instance_head") or {}
    return instantiate(
        cfg.data,
        prompts=instantiate(cfg.prompts),
        embedding_cache=embedding_cache,
        resize_interpolation=get_hyper_params(cfg.model.variant).resize_interpolation,
        instance_targets=bool(head.get("enabled", False)),
        _convert_="all",
    )


def open_embedding_cache(cfg: DictConfig, module: SamFineTuner) -> EmbeddingCache | None:
    """The cache at `cache.dir` when training can read it (frozen encoder, flips-only
    augmentation), else None with the reason logged. A stale or partial cache is an error."""
    root = (cfg.get("cache") or {}).get("dir")
    if not root:
        return None
    augment = build_augment(to_plain(cfg.data.get("train_augment")))
    reason = why_not_cached(module.finetune_config.image_encoder, augment)
    if reason:
        log.warning("embedding cache %s not used: %s", root, reason)
        return None
    stamp = (cfg.get("cache") or {}).get("image_stamp", "mtime")
    return EmbeddingCache.open(root, cache_key(module.model, stamp))


def build_loggers(cfg: DictConfig) -> list:
    specs = (cfg.get("logger") or {}).values()
    return [without_wandb_anonymous(instantiate(spec)) for spec in specs if spec]


def build_callbacks(cfg: DictConfig) -> list:
    return [instantiate(spec) for spec in (cfg.get("callbacks") or {}).values() if spec]

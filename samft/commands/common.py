"""Building objects from a composed config: the few `instantiate` calls at the edges."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from samft.train.module import SamFineTuner


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
    )


def build_datamodule(cfg: DictConfig):
    return instantiate(cfg.data, prompts=instantiate(cfg.prompts), _convert_="all")


def build_loggers(cfg: DictConfig) -> list:
    return [instantiate(spec) for spec in (cfg.get("logger") or {}).values() if spec]


def build_callbacks(cfg: DictConfig) -> list:
    return [instantiate(spec) for spec in (cfg.get("callbacks") or {}).values() if spec]

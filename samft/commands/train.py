"""`python -m samft train`: compose the config, build the objects, run Lightning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from samft.commands.common import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_module,
    open_embedding_cache,
    prepare_dataset,
)
from samft.weights import save_sam

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model described by `cfg`; returns the final validation metrics."""
    L.seed_everything(cfg.seed, workers=True)
    prepare_dataset(cfg)
    module = build_module(cfg)
    datamodule = build_datamodule(cfg, open_embedding_cache(cfg, module))
    trainer: L.Trainer = instantiate(
        cfg.trainer, logger=build_loggers(cfg), callbacks=build_callbacks(cfg)
    )
    output_dir = Path(cfg.output_dir)
    if not cfg.model.checkpoint and not cfg.ckpt_path and trainer.is_global_zero:
        # trained from scratch: keep the start point, so `samft eval` can show the gain
        save_sam(module.model, output_dir / "checkpoints" / "initial.pth")
    if cfg.validate_before_training and not cfg.ckpt_path:
        baseline = trainer.validate(module, datamodule=datamodule, verbose=False)
        if trainer.is_global_zero and baseline:
            _write_json(output_dir / "baseline_metrics.json", baseline[0])
            log.info("zero-shot baseline: val/miou=%.4f", baseline[0].get("val/miou", float("nan")))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    for callback in trainer.checkpoint_callbacks:
        if callback.save_last and callback.dirpath:
            # the periodic saves may stop short of the final step: make last.ckpt the end state
            trainer.save_checkpoint(Path(callback.dirpath) / "last.ckpt")
            break
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if trainer.is_global_zero:
        _write_json(output_dir / "final_metrics.json", metrics)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        log.info(
            "final val/miou=%.4f, best checkpoint: %s",
            metrics.get("val/miou", float("nan")),
            best or "none",
        )
    return metrics


def _write_json(path: Path, values: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: float(v) for k, v in values.items()}, indent=2, sort_keys=True))


@hydra.main(version_base="1.3", config_path="pkg://samft.conf", config_name="train")
def main(cfg: DictConfig) -> None:
    log.info("output directory: %s", cfg.output_dir)
    OmegaConf.resolve(cfg)
    train(cfg)

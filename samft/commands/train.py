"""`python -m samft train`: compose the config, build the objects, run Lightning."""

from __future__ import annotations

import json
import logging
import pickle
import signal
import sys
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from samft.commands.accelerator import check_accelerator, warn_bf16_on_cpu
from samft.commands.common import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_module,
    open_embedding_cache,
    prepare_dataset,
)
from samft.commands.quiet import quiet_library_noise
from samft.commands.resume import (
    keep_earlier_metrics,
    resume_command,
    resume_in_place,
    resume_point,
    resumes_in,
)
from samft.commands.run_config import write_run_config
from samft.commands.run_summary import run_summary
from samft.commands.schema import TRAINER_BOUNDS, check_group
from samft.data.images import allow_image_pixels
from samft.train.callbacks import SaveOnSignal
from samft.train.run_lock import RunLock, is_launcher_process
from samft.weights import save_sam
from samft.weights.files import (
    UnsafeCheckpointError,
    allowed_checkpoint_types,
)

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model described by `cfg`; returns the final validation metrics.

    The launching process holds the run folder's lock for the whole run. A stop signal
    saves `last.ckpt` (callback `save_on_signal`) and exits with 128 + the signal number.
    """
    output_dir = Path(cfg.output_dir)
    lock = RunLock(output_dir, resume=resumes_in(cfg.ckpt_path, output_dir))
    if is_launcher_process():
        lock.acquire()  # before anything is written into the folder
        write_run_config(cfg, output_dir)
    try:
        log.info("output directory: %s", output_dir)
        check_group(cfg.trainer, "trainer", TRAINER_BOUNDS)
        check_accelerator(cfg.trainer)
        warn_bf16_on_cpu(cfg.trainer)
        return _train(cfg, output_dir)
    finally:
        lock.release()


def _train(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg)
    resume = resume_point(  # the one read of ckpt_path by samft (Lightning's own follows)
        cfg.ckpt_path,
        module.finetune_config.image_encoder,
        module.model_config.variant,
        module.model.image_size,
    )
    ckpt_path = resume.path
    if getattr(module.model.image_encoder, "freeze_batchnorm", False):
        log.info(
            "the TinyViT encoder's BatchNorm layers keep their released running statistics "
            "(eval mode) during training, as intended for small batches; their weights train"
        )
    prepare_dataset(cfg)
    datamodule = build_datamodule(cfg, open_embedding_cache(cfg, module))
    loggers = build_loggers(cfg)
    if is_launcher_process():
        keep_earlier_metrics(loggers, resume.global_step)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers, callbacks=build_callbacks(cfg))
    if not cfg.model.checkpoint and not ckpt_path and trainer.is_global_zero:
        # trained from scratch: keep the start point, so `samft eval` can show the gain
        save_sam(module.model, output_dir / "checkpoints" / "initial.pth")
    baseline: list[dict] = []
    try:
        if cfg.validate_before_training and not ckpt_path:
            baseline = trainer.validate(module, datamodule=datamodule, verbose=False)
            if _signal_received(trainer) is not None:  # came after the last validation batch
                raise SIGTERMException
            if trainer.is_global_zero and baseline:
                _write_json(output_dir / "baseline_metrics.json", baseline[0])
                miou = baseline[0].get("val/miou", float("nan"))
                log.info("zero-shot baseline: val/miou=%.4f", miou)
        with allowed_checkpoint_types():  # Lightning's own load of ckpt_path runs no code
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        if trainer.global_step > 0 and module.validated_at_step != trainer.global_step:
            # e.g. max_steps reached between two validations: score the final weights once
            log.info(
                "training ended at step %d, after the last validation (step %s): validating",
                trainer.global_step,
                module.validated_at_step,
            )
            trainer.validate(module, datamodule=datamodule, verbose=False)
    except pickle.UnpicklingError as err:  # ckpt_path=last/hpc: a file Lightning found itself
        raise UnsafeCheckpointError(
            f"ckpt_path={ckpt_path}: refusing to load the checkpoint Lightning resolved: its "
            f"pickle holds more than tensors ({str(err).splitlines()[0]}). samft never runs "
            "anything from a checkpoint; resume from another checkpoint of the run"
        ) from None
    except SIGTERMException:
        raise SystemExit(_signal_exit_code(trainer, output_dir)) from None
    for callback in trainer.checkpoint_callbacks:
        if callback.save_last and callback.dirpath:
            # the periodic saves may stop short of the final step: make last.ckpt the end state
            trainer.save_checkpoint(Path(callback.dirpath) / "last.ckpt", weights_only=False)
            break
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if trainer.is_global_zero:
        _write_json(output_dir / "final_metrics.json", metrics)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        summary = run_summary(
            output_dir,
            baseline[0] if baseline else None,
            metrics,
            best or None,
            cfg.model.checkpoint or None,
        )
        log.info("run finished\n%s", summary)
    return metrics


def _signal_received(trainer: L.Trainer) -> int | None:
    received = [c.received for c in trainer.callbacks if isinstance(c, SaveOnSignal)]
    return next((s for s in received if s is not None), None)


def _signal_exit_code(trainer: L.Trainer, output_dir: Path) -> int:
    """128 + the signal that stopped the run (SIGTERM when no `SaveOnSignal` saw it); logs
    what was kept and the command that carries on."""
    signum = _signal_received(trainer) or int(signal.SIGTERM)
    name = signal.Signals(signum).name
    last = output_dir / "checkpoints" / "last.ckpt"
    if trainer.state.fn == "validate" or not last.is_file():
        log.error(
            "run stopped by %s before training started (zero-shot validation); nothing to "
            "resume: run the same command again",
            name,
        )
    else:
        log.error(
            "run stopped by %s at step %d; %s is kept. Resume with:\n  %s",
            name,
            trainer.global_step,
            last,
            resume_command(output_dir, last),
        )
    return 128 + signum


def _write_json(path: Path, values: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: float(v) for k, v in values.items()}, indent=2, sort_keys=True))


def main() -> None:
    """Run the Hydra app, in the run's own folder when resuming its checkpoint."""
    sys.argv = resume_in_place(sys.argv)
    hydra_main()


@hydra.main(version_base="1.3", config_path="pkg://samft.conf", config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    allow_image_pixels(cfg.max_image_pixels)
    quiet_library_noise()
    OmegaConf.resolve(cfg)
    train(cfg)

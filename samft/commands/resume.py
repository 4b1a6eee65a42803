"""Resuming a run: which checkpoint (checked before any work), in which folder, with which
metrics, and the command that does it.

`samft train ckpt_path=<run>/checkpoints/last.ckpt` goes on in `<run>` (`resume_in_place`),
reads the checkpoint safely and refuses one of another model, size or encoder mode
(`resume_point`, read once), and keeps one `metrics.csv` with every row (`keep_earlier_metrics`);
a stopped run prints `resume_command`.
"""

from __future__ import annotations

import csv
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import CSVLogger

from samft.io.atomic import previous_of
from samft.model.registry import VARIANTS, get_hyper_params
from samft.weights.files import CheckpointError, UnsafeCheckpointError, load_tensor_file

log = logging.getLogger(__name__)

LIGHTNING_CKPT_NAMES = ("last", "hpc", "best")  # ckpt_path values Lightning resolves itself


def resume_in_place(argv: list[str]) -> list[str]:
    """`argv` plus `hydra.run.dir=<run>` when `ckpt_path=` names a checkpoint inside a samft
    run folder (`<run>/checkpoints/*.ckpt`) and no run folder is given: a resumed run goes
    on in its own folder, with one log, one metrics file and its checkpoints together."""
    given = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("ckpt_path=")]
    if not given or any(a.startswith(("hydra.run.dir=", "+hydra.run.dir=")) for a in argv):
        return argv
    checkpoint = Path(given[-1])
    run = checkpoint.parent.parent
    if checkpoint.parent.name != "checkpoints" or not (run / "csv").is_dir():
        return argv
    return [*argv, f"hydra.run.dir={run.resolve()}"]


def resumes_in(ckpt_path: str | None, output_dir: Path) -> bool:
    if not ckpt_path:
        return False
    if ckpt_path in LIGHTNING_CKPT_NAMES:
        return True
    return output_dir.resolve() in Path(ckpt_path).resolve().parents


@dataclass(frozen=True)
class ResumePoint:
    """What `ckpt_path=` resumes: the checkpoint (a path, a name Lightning resolves itself,
    or None) and the training step it was saved at (None when samft did not read it)."""

    path: str | None
    global_step: int | None = None


def resume_point(
    ckpt_path: str | None,
    image_encoder: str,
    variant: str | None = None,
    image_size: int | None = None,
) -> ResumePoint:
    """The checkpoint `ckpt_path=` resumes, checked before any work and read once: a
    readable samft Lightning checkpoint of the same encoder mode, and of this run's model
    `variant` and input `image_size` when given. A damaged file falls back, with a warning,
    to the copy its last save kept (`last.ckpt.prev`)."""
    if not ckpt_path or ckpt_path in LIGHTNING_CKPT_NAMES:
        return ResumePoint(ckpt_path or None)
    path, checkpoint = _read_or_previous(Path(ckpt_path))
    if not isinstance(checkpoint, dict) or "pytorch-lightning_version" not in checkpoint:
        raise CheckpointError(
            f"ckpt_path={path}: not a samft training checkpoint. ckpt_path resumes a samft "
            "Lightning checkpoint (.ckpt, with optimizer and step); to start from weights "
            f"use model.checkpoint={path}"
        )
    hyper_parameters = checkpoint.get("hyper_parameters") or {}
    _check_same_model(path, hyper_parameters.get("model") or {}, variant, image_size)
    _check_same_encoder_mode(path, hyper_parameters.get("finetune") or {}, image_encoder)
    return ResumePoint(str(path), checkpoint.get("global_step"))


def resume_checkpoint(
    ckpt_path: str | None,
    image_encoder: str,
    variant: str | None = None,
    image_size: int | None = None,
) -> str | None:
    """The path (or Lightning name) of `resume_point(...)`: the checkpoint `ckpt_path=`
    resumes, checked before any work."""
    return resume_point(ckpt_path, image_encoder, variant, image_size).path


def _read_or_previous(path: Path) -> tuple[Path, Any]:
    """(the file read, its contents): `path`, or the copy its last save kept when `path`
    is damaged (with a warning). CheckpointError when neither can be read safely."""
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={path}: file not found")
    try:
        return path, load_tensor_file(path, mmap=True)
    except UnsafeCheckpointError as err:
        raise CheckpointError(f"ckpt_path={path}: {err}") from None
    except CheckpointError as err:
        previous = previous_of(path)
        if not previous.is_file():
            raise CheckpointError(
                f"ckpt_path={path}: cannot be read, the file is damaged (a save cut short?): "
                f"resume from another checkpoint of the run. ({err})"
            ) from None
        log.warning("ckpt_path=%s cannot be read (%s); resuming from %s", path, err, previous)
    try:
        return previous, load_tensor_file(previous, mmap=True)
    except CheckpointError as err:
        raise CheckpointError(f"ckpt_path={previous}: {err}") from None


def _check_same_encoder_mode(path: Path, finetune: dict, image_encoder: str) -> None:
    """CheckpointError when the checkpoint was trained with another
    `finetune.image_encoder` than this run's (their weights differ: LoRA adapters)."""
    saved = finetune.get("image_encoder")
    if saved and saved != image_encoder:
        raise CheckpointError(
            f"ckpt_path={path}: saved with finetune.image_encoder={saved}, but this run uses "
            f"finetune.image_encoder={image_encoder}; their weights differ (LoRA adapters). "
            f"Resume with the same finetune config, or start a new run from its weights with "
            f"model.checkpoint={path}"
        )


def _check_same_model(path: Path, saved: dict, variant: str | None, image_size: int | None) -> None:
    """CheckpointError when the checkpoint holds another SAM variant or input size than
    this run builds (its weights could not be loaded: hundreds of size mismatches)."""
    saved_variant = saved.get("variant")
    if variant is None or not saved_variant:
        return
    saved_size = saved.get("image_size")
    if saved_size is None and saved_variant in VARIANTS:
        saved_size = get_hyper_params(saved_variant).image_size
    if saved_variant != variant or (image_size and saved_size and saved_size != image_size):
        raise CheckpointError(
            f"ckpt_path={path}: a run of model variant {saved_variant} at {saved_size} px, but "
            f"this run builds {variant} at {image_size} px. Resume with the run's own model "
            f"(model={saved_variant} model.image_size={saved_size}), or start a new run from "
            f"its weights with model.checkpoint={path}"
        )


def keep_earlier_metrics(loggers: list, resume_step: int | None = None) -> None:
    """One `metrics.csv` with every row of the run, across resumes.

    Lightning's CSVLogger deletes an existing `metrics.csv` when it starts (a resume into
    the same run folder). The file is first kept as `metrics-<n>.csv` (a backup), then its
    rows from before `resume_step` (the checkpoint's step; None: all) start the new
    `metrics.csv`, and the logger appends to them."""
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        current = Path(logger.log_dir) / "metrics.csv"
        if not current.is_file():
            continue
        n = 1
        while (current.parent / f"metrics-{n}.csv").exists():
            n += 1
        backup = current.rename(current.parent / f"metrics-{n}.csv")
        with open(backup, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if resume_step is not None:
            rows = [r for r in rows if not r.get("step") or int(float(r["step"])) < resume_step]
        writer = logger.experiment  # created now: nothing left for it to delete
        keys = sorted({key for row in rows for key in row})
        with open(current, "w", newline="") as handle:
            table = csv.DictWriter(handle, fieldnames=keys)
            table.writeheader()
            table.writerows(rows)
        writer.metrics_keys = keys
        log.info("metrics.csv continues the %d earlier rows (backup: %s)", len(rows), backup)


def resume_command(output_dir: Path, checkpoint: Path) -> str:
    """`python -m samft train <this run's overrides> hydra.run.dir=<run> ckpt_path=<ckpt>`:
    the run continues in its own folder."""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    kept = [o for o in overrides if not o.startswith(("ckpt_path=", "hydra.run.dir="))]
    words = [*kept, f"hydra.run.dir={output_dir}", f"ckpt_path={checkpoint}"]
    return "python -m samft train " + " ".join(shlex.quote(w) for w in words)

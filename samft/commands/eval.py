"""`python -m samft eval checkpoint=PATH [checkpoint=[A,B]] data.val.annotations=... ...`.

Thin Hydra app around `samft.evaluate`: picks the dataset spec of the chosen split (from
the config, or from the training run a checkpoint came from), evaluates each checkpoint,
prints the table and writes the JSON report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from samft.evaluate.prompted import evaluate_checkpoint
from samft.evaluate.report import build_report, format_table
from samft.io.files import prepare_output_dir, write_json_atomic
from samft.weights.lightning import read_lightning_info

log = logging.getLogger(__name__)

# Trainer arguments eval decides itself: no logger or checkpoint files from a test run.
FORCED_TRAINER_OPTIONS = {"logger": False, "enable_checkpointing": False, "callbacks": None}


def checkpoint_list(value: Any) -> list[str]:
    """`checkpoint=PATH` or `checkpoint=[A,B]` as a list of one or two paths."""
    paths = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    if not 1 <= len(paths) <= 2 or not all(isinstance(p, str) and p for p in paths):
        raise ValueError(
            f"checkpoint={value!r}; expected one path or a list of two: checkpoint=[A,B]"
        )
    return paths


def run_config_of(checkpoint: str | Path) -> Path | None:
    """`.hydra/config.yaml` of the `samft train` run a Lightning checkpoint belongs to."""
    checkpoint = Path(checkpoint).resolve()
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        candidate = folder / ".hydra" / "config.yaml"
        if candidate.is_file():
            return candidate
    return None


def dataset_settings(cfg: DictConfig, checkpoints: Sequence[str]) -> tuple[dict, DictConfig]:
    """The dataset spec of `cfg.split` and the data node it came from.

    The command line's `data` wins; if its split still has unset (???) values, the data
    config of the training run of the first Lightning checkpoint is used instead.
    """
    split = cfg.split
    data = cfg.data
    node = data.get(split) if data is not None else None
    if node is not None and not OmegaConf.missing_keys(node):
        return OmegaConf.to_container(node, resolve=True), data
    for path in checkpoints:
        run_config = run_config_of(path) if read_lightning_info(path) else None
        if run_config is None:
            continue
        run_data = OmegaConf.load(run_config).get("data")
        run_node = run_data.get(split) if run_data is not None else None
        if run_node is not None and not OmegaConf.missing_keys(run_node):
            log.info("data.%s not set: using the training run's, from %s", split, run_config)
            return OmegaConf.to_container(run_node, resolve=True), run_data
    unset = sorted(OmegaConf.missing_keys(node)) if node is not None else [f"data.{split}"]
    raise ValueError(
        f"data.{split} is not set (missing: {', '.join(unset)}); "
        f"give them on the command line, e.g. data.{split}.annotations=ann.json "
        f"data.{split}.images=images/, or pass a checkpoint from a `samft train` run"
    )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the configured checkpoint(s); returns the JSON report."""
    checkpoints = checkpoint_list(cfg.checkpoint)
    output = Path(cfg.output)
    prepare_output_dir(output.parent, f"output={cfg.output}")
    spec, data = dataset_settings(cfg, checkpoints)
    trainer_options = OmegaConf.to_container(cfg.trainer, resolve=True) if cfg.trainer else {}
    trainer_options.pop("_target_", None)
    trainer_options.update(FORCED_TRAINER_OPTIONS)
    settings = {
        "split": cfg.split,
        "dataset": spec,
        "seed": cfg.seed,
        "prompt_types": OmegaConf.to_container(cfg.prompt_types, resolve=True),
        "clicks": list(cfg.clicks),
        "multimask_output": cfg.multimask_output,
        "min_area": data.get("min_area", 16),
        "max_area_fraction": data.get("max_area_fraction", 0.9),
        "max_objects_per_image": cfg.max_objects_per_image,
        "max_images": cfg.max_images,
    }
    summaries = [
        evaluate_checkpoint(
            path,
            spec,
            prompts=settings["prompt_types"],
            clicks=settings["clicks"],
            multimask_output=cfg.multimask_output,
            seed=cfg.seed,
            min_area=settings["min_area"],
            max_area_fraction=settings["max_area_fraction"],
            max_objects_per_image=cfg.max_objects_per_image,
            max_images=cfg.max_images,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            variant=cfg.variant,
            trainer_options=trainer_options,
        )
        for path in checkpoints
    ]
    report = build_report(summaries, settings)
    print(format_table(summaries), flush=True)
    write_json_atomic(output, report)
    log.info("report written to %s", output)
    return report


@hydra.main(version_base="1.3", config_path="pkg://samft.conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)

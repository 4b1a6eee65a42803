"""`python -m samft eval mode=instance ...`: the segment-everything half of `eval`.

Reads `instance.*` of conf/eval.yaml, scores each checkpoint with
`samft.evaluate.automatic.evaluate_automatic` (the point grid) and/or
`samft.evaluate.head.evaluate_head` (its instance head; `instance.generator`), prints the
table, writes the JSON report and, with `instance.write_thresholds_to`, stores each
checkpoint's chosen thresholds in its export's sidecar (where `samft segment` finds them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from samft.commands.schema import AUTOMATIC_MASK_SETTINGS, HEAD_SETTINGS, check_settings
from samft.evaluate.automatic import InstanceResult, evaluate_automatic
from samft.evaluate.head import HEAD_THRESHOLDS, evaluate_head
from samft.evaluate.instance_report import (
    build_instance_report,
    format_instance_table,
    instance_notes,
)
from samft.evaluate.threshold_search import search_cells
from samft.io.files import prepare_output_dir, sha256_file, write_json_atomic
from samft.weights.instance_head import SIDECAR_KEY as HEAD_KEY
from samft.weights.instance_head import check_head_thresholds, read_instance_head
from samft.weights.known import resolve_checkpoint
from samft.weights.thresholds import read_sidecar, write_sidecar_thresholds

log = logging.getLogger(__name__)

WRITE_KEY = "instance.write_thresholds_to"
GENERATORS = ("auto", "grid", "head", "both")


def generators_for(choice: str, checkpoints: Sequence[str]) -> list[tuple[str, str]]:
    """(checkpoint, "grid" or "head") to score: `auto` is the head where a checkpoint has
    one, else the grid; `both` (one checkpoint) scores the grid, then the head."""
    if choice not in GENERATORS:
        raise ValueError(f"instance.generator={choice!r}; expected one of {list(GENERATORS)}")
    if choice == "both" and len(checkpoints) != 1:
        raise ValueError("instance.generator=both compares the grid and the head of ONE checkpoint")
    jobs = []
    for path in checkpoints:
        if choice == "auto":
            has_head = read_instance_head(resolve_checkpoint(path)) is not None
            jobs.append((path, "head" if has_head else "grid"))
        else:
            jobs += [(path, kind) for kind in (("grid", "head") if choice == "both" else (choice,))]
    return jobs


def device_of(trainer: Mapping[str, Any] | None) -> str:
    """The torch device for `trainer.accelerator` (cpu, gpu/cuda, mps; else auto)."""
    accelerator = str((trainer or {}).get("accelerator", "auto")).lower()
    return {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "mps": "mps"}.get(accelerator, "auto")


def grid_values(fixed: Any, values: Any, key: str) -> list[float] | None:
    """The values searched for one threshold: `[fixed]` when it is set, else the list
    (None: micro-sam's default grid)."""
    if fixed is not None:
        return [float(fixed)]
    if values is None:
        return None
    if not isinstance(values, (list, tuple, ListConfig)) or not values:
        raise ValueError(f"instance.{key}s={values!r}; expected a list such as [0.7,0.8,0.9]")
    return [float(v) for v in values]


def min_size_values(fixed: Any, values: Any) -> list[int] | None:
    """The head's `min_size` values searched: `[fixed]` when set, else the list (None: 0)."""
    found = grid_values(fixed, values, "min_size")
    if found is None:
        return None
    if any(v < 0 or v != int(v) for v in found):
        raise ValueError(
            f"instance.min_size(s)={found}: sizes are whole pixel counts >= 0, e.g. [0,8,16,32]"
        )
    return [int(v) for v in found]


def sidecar_targets(value: Any, checkpoints: Sequence[str]) -> list[Path | None]:
    """`instance.write_thresholds_to` as one sidecar (or None) per checkpoint, each checked
    to be the sidecar of an export of that checkpoint, before any model runs."""
    if value is None:
        return [None] * len(checkpoints)
    if isinstance(value, (list, tuple, ListConfig)):
        targets = list(value)
    elif len(checkpoints) == 1:
        targets = [value]
    else:
        raise ValueError(
            f"{WRITE_KEY}={value} with two checkpoints: give one sidecar per checkpoint, "
            f"e.g. {WRITE_KEY}=[null,exports/b.json]"
        )
    if len(targets) != len(checkpoints):
        raise ValueError(
            f"{WRITE_KEY}: {len(targets)} path(s) for {len(checkpoints)} checkpoint(s)"
        )
    paths: list[Path | None] = []
    for target, checkpoint in zip(targets, checkpoints, strict=True):
        if target is None:
            paths.append(None)
            continue
        sidecar = read_sidecar(target, f"{WRITE_KEY}={target}")
        # rewritten atomically at the end: its folder must take a new file, now
        prepare_output_dir(Path(target).parent, f"{WRITE_KEY}={target}")
        digest = sha256_file(resolve_checkpoint(checkpoint))
        known = {sidecar.get("source", {}).get("sha256")}
        known |= {entry.get("sha256") for entry in sidecar.get("files", {}).values()}
        if digest not in known:
            raise ValueError(
                f"{WRITE_KEY}={target} describes another model than checkpoint={checkpoint} "
                "(neither its source nor its files have that checkpoint's sha256); give the "
                "sidecar of this checkpoint's export"
            )
        paths.append(Path(target))
    return paths


def _score_head(cfg: DictConfig, path: str, spec: dict) -> InstanceResult:
    opts = cfg.instance
    values = {key: grid_values(opts.get(key), opts.get(f"{key}s"), key) for key in HEAD_THRESHOLDS}
    return evaluate_head(
        path,
        spec,
        foreground_threshs=values["foreground_thresh"],
        center_threshs=values["center_thresh"],
        boundary_threshs=values["boundary_thresh"],
        min_sizes=min_size_values(opts.get("min_size"), opts.get("min_sizes")),
        criterion=opts.criterion,
        max_images=cfg.max_images,
        variant=cfg.variant,
        device=device_of(cfg.trainer),
        name=f"data.{cfg.split}",
    )


def _write_head_thresholds(
    target: Path, result: InstanceResult, cfg: DictConfig, source: str
) -> None:
    """Store the head's chosen watershed thresholds in the sidecar's `instance_head`."""
    metrics = result.summary.metrics
    data = read_sidecar(target, f"{WRITE_KEY}={target}")
    if HEAD_KEY not in data:
        raise ValueError(f"{WRITE_KEY}={target}: this export has no instance head entry")
    chosen = {key: metrics[key] for key in (*HEAD_THRESHOLDS, "min_size")}
    data[HEAD_KEY]["thresholds"] = {
        **check_head_thresholds(chosen, f"{HEAD_KEY}.thresholds"),
        "criterion": cfg.instance.criterion,
        cfg.instance.criterion: result.search.best[cfg.instance.criterion],
        "chosen_on": f"split {cfg.split}, {source}",
        "chosen_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(target, data)
    log.info("instance-head thresholds of %s written to %s", result.summary.path, target)


def evaluate_instances(
    cfg: DictConfig, checkpoints: Sequence[str], spec: dict, source: str
) -> dict[str, Any]:
    """Instance mode of `samft eval`; returns the JSON report."""
    opts = cfg.instance
    check_settings(opts, AUTOMATIC_MASK_SETTINGS, "instance.")
    ious = grid_values(opts.pred_iou_thresh, opts.pred_iou_threshs, "pred_iou_thresh")
    stabilities = grid_values(
        opts.stability_score_thresh, opts.stability_score_threshs, "stability_score_thresh"
    )
    check_settings(opts, HEAD_SETTINGS, "instance.")
    jobs = generators_for(opts.get("generator", "auto"), checkpoints)
    targets = sidecar_targets(opts.write_thresholds_to, checkpoints)
    settings = {
        "mode": "instance",
        "split": cfg.split,
        "dataset": spec,
        "dataset_source": source,
        **OmegaConf.to_container(opts, resolve=True),
        "grid_cells": len(search_cells(ious, stabilities)),
        "max_images": cfg.max_images,
    }
    results = [
        _score_head(cfg, path, spec)
        if kind == "head"
        else evaluate_automatic(
            path,
            spec,
            points_per_side=opts.points_per_side,
            points_per_batch=opts.points_per_batch,
            crop_n_layers=opts.crop_n_layers,
            crop_overlap_ratio=opts.crop_overlap_ratio,
            crop_n_points_downscale_factor=opts.crop_n_points_downscale_factor,
            pred_iou_threshs=ious,
            stability_score_threshs=stabilities,
            criterion=opts.criterion,
            min_object_size=opts.min_object_size,
            covered_thresh=opts.covered_thresh,
            max_images=cfg.max_images,
            variant=cfg.variant,
            device=device_of(cfg.trainer),
            name=f"data.{cfg.split}",
        )
        for path, kind in jobs
    ]
    report = build_instance_report(results, settings)
    table = format_instance_table(results)
    kinds = sorted({kind for _, kind in jobs})
    print(table, instance_notes(settings, source, kinds), sep="\n", flush=True)
    write_json_atomic(Path(cfg.output), report)
    log.info("report written to %s", cfg.output)
    target_of = dict(zip(checkpoints, targets, strict=True))
    for (path, kind), result in zip(jobs, results, strict=True):
        target = target_of[path]
        if target is not None and kind == "head":
            _write_head_thresholds(target, result, cfg, source)
        elif target is not None:
            metrics = result.summary.metrics
            write_sidecar_thresholds(
                target,
                {
                    "pred_iou_thresh": metrics["pred_iou_thresh"],
                    "stability_score_thresh": metrics["stability_score_thresh"],
                    "covered_thresh": float(opts.covered_thresh),
                    "criterion": opts.criterion,
                    opts.criterion: result.search.best[opts.criterion],
                    "points_per_side": opts.points_per_side,
                    "crop_n_layers": opts.crop_n_layers,
                    "crop_overlap_ratio": opts.crop_overlap_ratio,
                    "crop_n_points_downscale_factor": opts.crop_n_points_downscale_factor,
                    "chosen_on": f"split {cfg.split}, {source}",
                    "chosen_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                },
                f"{WRITE_KEY}={target}",
            )
            log.info("thresholds of %s written to %s", result.summary.path, target)
    return report

"""`python -m samft eval checkpoint=PATH [checkpoint=[A,B]] data.val.annotations=... ...`.

Thin Hydra app around `samft.evaluate`: picks the dataset spec of the chosen split (from
the config, or from the training run a checkpoint came from), evaluates each checkpoint,
prints the table and writes the JSON report. `mode=prompted` (the default) scores prompts;
`mode=instance` scores automatic masks (`samft.commands.eval_instance`).
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, MissingMandatoryValue, OmegaConf

from samft.commands.accelerator import check_accelerator, warn_bf16_on_cpu
from samft.commands.eval_instance import evaluate_instances
from samft.commands.schema import TRAINER_BOUNDS, check_group
from samft.data.images import allow_image_pixels
from samft.evaluate.prompted import evaluate_checkpoint
from samft.evaluate.report import build_report, format_table
from samft.io.files import prepare_output_dir, write_json_atomic
from samft.weights.lightning import read_lightning_info

log = logging.getLogger(__name__)

MODES = ("prompted", "instance")
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


# Keys that say where a split's data is (coco: annotations + images, folder: images + masks,
# sa1b: root [+ images]). One of them set while another is unset (???) is a partial split.
LOCATION_KEYS = ("annotations", "images", "masks", "root")


def _is_unset(node: DictConfig, key: str) -> bool:
    """`???`, or an interpolation to a `???` value."""
    if OmegaConf.is_missing(node, key):
        return True
    try:
        node[key]
    except MissingMandatoryValue:
        return True
    return False


def _command_line_keys(split: str) -> set[str]:
    """Keys of `data.<split>` given as overrides on the command line (empty outside Hydra)."""
    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:  # not running under Hydra (a direct call)
        return set()
    prefix = f"data.{split}."
    keys = set()
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith(prefix):
            keys.add(key[len(prefix) :].split(".", 1)[0])
    return keys


def split_state(data: DictConfig | None, split: str) -> tuple[list[str], list[str]]:
    """(given, unset) keys of `data.<split>`: `given` are the location keys with a value and
    the keys set on the command line; `unset` the keys still `???`."""
    node = data.get(split) if data is not None else None
    if not isinstance(node, DictConfig):
        return [], []
    unset = [key for key in node if _is_unset(node, key)]
    given = {
        key for key in LOCATION_KEYS if key in node and key not in unset and node[key] is not None
    }
    given |= _command_line_keys(split) - set(unset)
    return sorted(given), unset


def describe_split(spec: dict) -> str:
    """`format=coco, annotations=..., images=...`: where a split's data is."""
    shown = [f"format={spec.get('format')}"] if spec.get("format") else []
    shown += [f"{key}={spec[key]}" for key in LOCATION_KEYS if spec.get(key) is not None]
    return ", ".join(shown)


def dataset_settings(cfg: DictConfig, checkpoints: Sequence[str]) -> tuple[dict, DictConfig, str]:
    """The dataset spec of `cfg.split`, the data node it came from and where it came from.

    A split given completely on the command line is used. A split given in part (one of its
    keys set, another still `???`) is an error naming the unset keys: scoring some other data
    instead would be silent. Only a split with none of its keys given falls back to the data
    config of the training run of the first Lightning checkpoint, and says so.
    """
    split = cfg.split
    data = cfg.data
    node = data.get(split) if data is not None else None
    given, unset = split_state(data, split)
    if node is not None and not unset:
        spec = OmegaConf.to_container(node, resolve=True)
        return spec, data, f"data.{split} from the command line: {describe_split(spec)}"
    if given:
        missing = ", ".join(f"data.{split}.{key}" for key in unset)
        have = ", ".join(f"data.{split}.{key}" for key in given)
        raise ValueError(
            f"{missing} not set: {have} {'is' if len(given) == 1 else 'are'} given, so "
            f"data.{split} must be given in full (e.g. "
            + " ".join(f"data.{split}.{key}=..." for key in unset)
            + f"). Give none of data.{split}'s keys to score the data the checkpoint was "
            "trained with."
        )
    for path in checkpoints:
        run_config = run_config_of(path) if read_lightning_info(path) else None
        if run_config is None:
            continue
        run_data = OmegaConf.load(run_config).get("data")
        run_node = run_data.get(split) if run_data is not None else None
        if run_node is not None and not OmegaConf.missing_keys(run_node):
            spec = OmegaConf.to_container(run_node, resolve=True)
            source = f"data.{split} of the training run ({run_config}): {describe_split(spec)}"
            log.info("data.%s not given: scoring %s", split, source)
            return spec, run_data, source
    names = [f"data.{split}.{key}" for key in unset] or [f"data.{split}"]
    raise ValueError(
        f"data.{split} is not set (missing: {', '.join(names)}); "
        f"give them on the command line, e.g. data.{split}.annotations=ann.json "
        f"data.{split}.images=images/, or pass a checkpoint from a `samft train` run"
    )


def table_notes(settings: dict[str, Any], source: str) -> str:
    """What the table's numbers are, and why they differ from training's `val/miou`."""
    multimask = settings["multimask_output"]
    if multimask == "auto":
        first = (
            "the first prompt is answered with the best-scored of the 3 multimask outputs "
            "for a single point and with the single-mask output for other prompts "
            "(multimask_output=auto)"
        )
    elif multimask:
        first = "the first prompt is answered with the best-scored of the 3 multimask outputs"
    else:
        first = "every prompt is answered with the single-mask output"
    types = ", ".join(name for name, spec in settings["prompt_types"].items() if spec)
    objects = settings["max_objects_per_image"]
    lines = [
        f"miou, dice, sizes: every {'' if objects is None else f'(up to {objects} per image) '}"
        f"usable object prompted once with each prompt type ({types}); {first}.",
        "click_N rows: after N simulated centre correction clicks, each answered with the "
        "single-mask output (as SAM's predictor does for several points).",
        "Training's val/miou differs: it uses the training prompt mix (conf prompts), "
        "the run's interactive.multimask_output and at most data.val_max_objects_per_image "
        "objects per image. A run trained with interactive.multimask_output=true (the demo) "
        "never trains the single-mask output, so its box, points and click_N scores are low "
        "here; multimask_output=true scores the first prompt as it was trained.",
    ]
    wrapped = [textwrap.fill(line, width=100, subsequent_indent="  ") for line in lines]
    return "\n".join([f"data: {source}", *wrapped])  # paths unwrapped: they get copied


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the configured checkpoint(s); returns the JSON report."""
    if cfg.mode not in MODES:
        raise ValueError(f"mode={cfg.mode}; expected one of {list(MODES)}")
    checkpoints = checkpoint_list(cfg.checkpoint)
    output = Path(cfg.output)
    prepare_output_dir(output.parent, f"output={cfg.output}")
    check_accelerator(cfg.trainer)
    spec, data, source = dataset_settings(cfg, checkpoints)
    if cfg.mode == "instance":
        return evaluate_instances(cfg, checkpoints, spec, source)
    warn_bf16_on_cpu(cfg.trainer)  # only the prompted scores run under trainer.precision
    check_group(cfg.trainer, "trainer", TRAINER_BOUNDS)
    trainer_options = OmegaConf.to_container(cfg.trainer, resolve=True) if cfg.trainer else {}
    trainer_options.pop("_target_", None)
    # nested `_target_` specs (plugins, a strategy) become objects, as `samft train` builds them
    trainer_options = instantiate(trainer_options, _convert_="all")
    trainer_options.update(FORCED_TRAINER_OPTIONS)
    settings = {
        "split": cfg.split,
        "dataset": spec,
        "dataset_source": source,
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
    print(format_table(summaries), table_notes(settings, source), sep="\n", flush=True)
    write_json_atomic(output, report)
    log.info("report written to %s", output)
    return report


@hydra.main(version_base="1.3", config_path="pkg://samft.conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    allow_image_pixels(cfg.max_image_pixels)
    evaluate(cfg)

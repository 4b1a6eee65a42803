"""Zero-shot LiteMedSAM against samft's fine-tuning recipes, on real data.

Each mode trains on dsb-nuclei/train with the recipe `conf/experiment/litemedsam_<mode>.yaml`
(through `samft.commands.cache` and `samft.commands.train`, as `python -m samft cache/train`
would), then scores its last checkpoint with `samft.evaluate.prompted.evaluate_checkpoint`
on dsb-nuclei/val and on ct-organs (a CT domain LiteMedSAM was trained on: forgetting).

    zero_shot  the released LiteMedSAM weights, untouched
    decoder    encoder frozen, embeddings cached once, prompt encoder + decoder trained
    automatic  the decoder recipe plus points anywhere on the image for automatic mode
    lora       LoRA on the encoder's attention + decoder (encoder runs every step)
    full       everything trained
    clicks     the second stage on top of a LoRA run (`--base`, default this --work's lora
               run): its encoder frozen and cached, the decoder trained on 4 centre
               correction clicks a prompt

Every model sees the same deterministic prompts (`PROTOCOL`): one centre point (the object
pixel farthest from its border, the best of the 3 multimask outputs by predicted IoU), 3
positive + 1 negative points, the tight box (no noise); then 1, 3 and 5 simulated centre
correction clicks. Each run is its own child process: wall times and the peak resident set
(VmHWM of that process) are per run. Figures go to a JSON file (`--output`).

`--device cuda` trains on one GPU (`trainer=gpu`, 4 loader workers) and scores there too,
and adds the GPU's peak allocated memory; `--precision` sets the training precision
(default: 32-true on the CPU, bf16-mixed on a GPU). Scoring stays in fp32 on either, so
rows of both precisions compare.

    python scripts/bench_finetune.py                               # all modes, recipe steps
    python scripts/bench_finetune.py --modes zero_shot decoder --steps decoder=150
    python scripts/bench_finetune.py --modes zero_shot decoder \
        --picture docs/results_dsb_before_after.png
    python scripts/bench_finetune.py --modes lora clicks --work runs   # the two stages
    python scripts/bench_finetune.py --device cuda --modes zero_shot lora clicks --val-objects 0
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
MODES = ("zero_shot", "decoder", "automatic", "lora", "full", "clicks")
CACHED_MODES = ("decoder", "automatic", "clicks")  # encoder frozen: embeddings cached once
SHARED_CACHE_MODES = ("decoder", "automatic")  # the released encoder: one cache for both
CHECKPOINT = "litemedsam"  # the released weights (samft.weights.known)

# One prompt per object for each type, the same for every model (seeded per image and type).
PROTOCOL: dict[str, dict[str, Any]] = {
    "one_point": {  # interior_fraction 1: only the pixels farthest from the border
        "point_prob": 1.0,
        "box_prob": 0.0,
        "num_points": [1, 1],
        "num_negatives": [0, 0],
        "positive_region": "interior",
        "interior_fraction": 1.0,
    },
    "points": {"point_prob": 1.0, "box_prob": 0.0, "num_points": [3, 3], "num_negatives": [1, 1]},
    "box": {"point_prob": 0.0, "box_prob": 1.0, "box_noise_std": 0.0},
}
CLICKS = (1, 3, 5)
DEVICES = {"cpu": "cpu", "cuda": "gpu"}  # --device -> Lightning accelerator
DEFAULT_PRECISION = {"cpu": "32-true", "cuda": "bf16-mixed"}
REPORTED = (
    "miou/one_point",
    "miou/points",
    "miou/box",
    "miou/click_1",
    "miou/click_3",
    "miou/click_5",
    "iou_head_mae",
)


def dataset_specs(data: Path) -> dict[str, dict[str, str]]:
    dsb, ct = data / "dsb-nuclei", data / "ct-organs"
    return {
        "dsb_train": {
            "format": "coco",
            "annotations": str(dsb / "train.json"),
            "images": str(dsb / "train" / "images"),
        },
        "dsb_val": {
            "format": "coco",
            "annotations": str(dsb / "val.json"),
            "images": str(dsb / "val" / "images"),
        },
        "ct": {"format": "coco", "annotations": str(ct / "annotations.json"), "images": str(ct)},
    }


def device_overrides(device: str, precision: str) -> list[str]:
    """Training overrides for `--device` and `--precision`: the recipes' CPU trainer as it
    is, or one GPU with loader workers (the recipes load in the main process, for a CPU)."""
    overrides = [] if device == "cpu" else ["trainer=gpu", "data.num_workers=4"]
    return [*overrides, f"trainer.precision={precision}"]


def compose_train_config(mode: str, specs: dict, run_dir: Path, overrides: list[str]):
    """The config `python -m samft train +experiment=litemedsam_<mode> ...` composes, with
    the data paths, a CSV logger, no validation during training (scored afterwards)."""
    from hydra import compose, initialize_config_module

    train, val = specs["dsb_train"], specs["dsb_val"]
    args = [
        f"+experiment=litemedsam_{mode}",
        f"data.train.annotations={train['annotations']}",
        f"data.train.images={train['images']}",
        f"data.val.annotations={val['annotations']}",
        f"data.val.images={val['images']}",
        f"output_dir={run_dir}",
        "logger=csv",
        "validate_before_training=false",
        "+trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        "callbacks.best_checkpoint=null",
        "callbacks.prediction_pictures=null",
        *overrides,
    ]
    if mode in CACHED_MODES:  # the released encoder's cache is shared: built once
        shared = mode in SHARED_CACHE_MODES
        args.append(f"cache.dir={run_dir.parent / 'cache' if shared else run_dir / 'cache'}")
    with initialize_config_module("samft.conf", version_base="1.3"):
        return compose("train", overrides=args)


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024


def _peak_gpu_mib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def evaluate(
    checkpoint: str, spec: dict, max_objects: int | None, clicks: bool, device: str = "cpu"
) -> dict:
    """Each prompt type of `PROTOCOL` once per object (`clicks=False`: no correction
    clicks), and with `clicks`, the one-point prompt followed by `CLICKS` centre clicks
    (`miou/click_N` then start from the centre point, as a user clicking once and
    correcting would). Two `evaluate_checkpoint` calls, so the clicks are decoded for one
    prompt type only (the decoder at 64 x 64 tokens is the cost on a CPU)."""
    from samft.evaluate.prompted import evaluate_checkpoint

    options = {
        "multimask_output": "auto",
        "seed": 0,
        "max_objects_per_image": max_objects,
        "trainer_options": {"accelerator": DEVICES[device], "precision": "32-true"},
    }
    metrics = evaluate_checkpoint(checkpoint, spec, prompts=PROTOCOL, clicks=(), **options).metrics
    if clicks:
        one_point = {"one_point": PROTOCOL["one_point"]}
        clicked = evaluate_checkpoint(checkpoint, spec, prompts=one_point, clicks=CLICKS, **options)
        metrics.update({k: v for k, v in clicked.metrics.items() if k.startswith("miou/click")})
    return metrics


def run_mode(mode: str, args: argparse.Namespace, queue: Any) -> None:
    """Child process: train (unless zero-shot), then score on dsb val and ct-organs."""
    import logging

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    from omegaconf import OmegaConf

    specs = dataset_specs(Path(args.data))
    result: dict[str, Any] = {"mode": mode}
    checkpoint = CHECKPOINT
    if mode != "zero_shot":
        from samft.commands.cache import cache_embeddings
        from samft.commands.train import train

        run_dir = Path(args.work) / mode
        overrides = [*device_overrides(args.device, args.precision), *args.override]
        if mode == "clicks":
            overrides.append(f"model.checkpoint={base_checkpoint(args)}")
        if mode in args.steps:
            overrides += ["trainer.max_epochs=-1", f"trainer.max_steps={args.steps[mode]}"]
        cfg = compose_train_config(mode, specs, run_dir, overrides)
        OmegaConf.resolve(cfg)
        start = time.perf_counter()
        checkpoint = str(run_dir / "checkpoints" / "last.ckpt")
        if args.score_only:  # a finished run of this mode under --work: score it again
            if not Path(checkpoint).is_file():
                raise SystemExit(f"--score-only: no {checkpoint}; train mode {mode} first")
        else:
            if mode in CACHED_MODES:
                cache_embeddings(cfg)
                result["cache_s"] = time.perf_counter() - start
            train(cfg)
            result["train_s"] = time.perf_counter() - start  # cache included
        result["steps"] = _global_step(checkpoint)
        result["recipe"] = {
            key: OmegaConf.to_container(cfg[key], resolve=True)
            for key in ("prompts", "interactive", "optim", "finetune")
        }
        result["recipe"]["data"] = {
            k: OmegaConf.to_container(cfg.data, resolve=True)[k]
            for k in ("batch_size", "max_objects_per_image", "train_augment")
        }
    result["checkpoint"] = checkpoint
    start = time.perf_counter()
    val = specs["dsb_val"]
    result["dsb_val"] = evaluate(checkpoint, val, args.val_objects, True, args.device)
    result["ct"] = evaluate(checkpoint, specs["ct"], None, False, args.device)
    result["eval_s"] = time.perf_counter() - start
    result["peak_rss_mib"] = _peak_rss_mib()
    if args.device == "cuda":
        result["peak_gpu_mib"] = _peak_gpu_mib()
    queue.put(result)


def wait_for_result(mode: str, child: Any, queue: Any) -> dict:
    """The child's figures; a child that dies without them (an error, a kill) ends the
    benchmark with its exit code instead of a parent waiting for ever."""
    import queue as queues

    while True:
        try:
            return queue.get(timeout=5)
        except queues.Empty:
            if child.is_alive():
                continue
            try:  # it may have put its figures just before exiting
                return queue.get(timeout=1)
            except queues.Empty:
                code = child.exitcode or 1
                raise SystemExit(f"mode {mode}: the run exited ({code}) without figures") from None


def base_checkpoint(args: argparse.Namespace) -> str:
    """The checkpoint the clicks stage starts from: `--base`, else the lora run in --work."""
    base = Path(args.base) if args.base else Path(args.work) / "lora" / "checkpoints" / "last.ckpt"
    if not base.is_file():
        raise SystemExit(f"--modes clicks: no {base}; give --base CKPT or run --modes lora clicks")
    return str(base)


def _global_step(checkpoint: str) -> int:
    from samft.weights.lightning import read_lightning_info

    info = read_lightning_info(checkpoint)
    if info is None:
        raise SystemExit(f"{checkpoint}: not a readable samft training checkpoint")
    return int(info["global_step"])


def parse_steps(values: list[str]) -> dict[str, int]:
    steps = {}
    for value in values:
        mode, _, count = value.partition("=")
        if mode not in MODES[1:] or not count.isdigit():
            raise SystemExit(f"--steps {value!r}: expected MODE=N with MODE in {MODES[1:]}")
        steps[mode] = int(count)
    return steps


def print_table(results: list[dict]) -> None:
    cols = ["mode", "steps", "1 pt", "pts", "box", "clk1", "clk3", "clk5", "mae"]
    cols += ["ct box", "train s", "eval s", "RSS MiB"]
    on_gpu = any("peak_gpu_mib" in r for r in results)
    cols += ["GPU MiB"] if on_gpu else []
    print(" | ".join(cols))
    for r in results:
        d = r["dsb_val"]
        row = [r["mode"], str(r.get("steps", 0))]
        row += [f"{d.get(k, float('nan')):.3f}" for k in REPORTED]
        row += [f"{r['ct'].get('miou/box', float('nan')):.3f}"]
        row += [f"{r.get('train_s', 0):.0f}", f"{r['eval_s']:.0f}", f"{r['peak_rss_mib']:.0f}"]
        row += [f"{r.get('peak_gpu_mib', 0):.0f}"] if on_gpu else []
        print(" | ".join(row), flush=True)


# ------------------------------------------------------------------ picture
def draw_picture(path: Path, checkpoints: dict[str, str], spec: dict, images: int) -> None:
    """Val images with each object's one-point answer (farthest-interior point, best of 3 by
    predicted IoU): ground truth | each checkpoint, mIoU of the image in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from samft.data.prompts import interior_region
    from samft.data.readers import build_reader
    from samft.infer.predictor import SamPredictor
    from samft.weights import load_sam

    reader = build_reader(spec, "dsb_val")
    predictors = {name: SamPredictor(load_sam(ckpt).eval()) for name, ckpt in checkpoints.items()}
    fig, axes = plt.subplots(
        images, 1 + len(predictors), figsize=(2.2 * (1 + len(predictors)), 2.2 * images)
    )
    rng = np.random.default_rng(0)
    colours = rng.uniform(0.2, 1.0, (512, 3))
    for row in range(images):
        loaded = reader[row]
        image = loaded.image
        masks = [m for m in loaded.masks if m.sum() >= 16]
        points = []
        for mask in masks:
            ys, xs = np.nonzero(interior_region(mask, 1.0))
            points.append((xs[0], ys[0]))
        panels = {"ground truth": (masks, None)}
        for name, predictor in predictors.items():
            predictor.set_image(image)
            preds, ious = [], []
            for mask, (x, y) in zip(masks, points, strict=True):
                with torch.no_grad():
                    out, scores, _ = predictor.predict(
                        np.array([[x, y]], dtype=np.float32), np.array([1]), multimask_output=True
                    )
                pred = out[int(np.argmax(scores))]
                preds.append(pred)
                ious.append((pred & mask).sum() / max((pred | mask).sum(), 1))
            panels[f"{name}: {np.mean(ious):.2f}"] = (preds, points)
        for col, (title, (shown, pts)) in enumerate(panels.items()):
            overlay = image.astype(np.float32) / 255 * 0.6
            for k, m in enumerate(shown):
                overlay[m] = 0.4 * overlay[m] + 0.6 * colours[k % len(colours)]
            ax = axes[row, col]
            ax.imshow(np.clip(overlay, 0, 1))
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=3, c="red")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    print(f"picture: {path} ({path.stat().st_size // 1024} KB)")


def check_device(device: str) -> str:
    """The machine's line of the report; a one-line exit when `cuda` has no device here."""
    import torch

    if device == "cpu":
        return f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"
    if not torch.cuda.is_available():
        raise SystemExit(
            f"--device cuda: torch {torch.__version__} sees no CUDA device here; "
            "run on a GPU machine or leave --device out"
        )
    return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--steps", nargs="*", default=[], help="MODE=N training steps (default: the recipe's)"
    )
    parser.add_argument(
        "--data", default=str(DEFAULT_DATA), help="folder with dsb-nuclei/, ct-organs/"
    )
    parser.add_argument("--work", default=None, help="run folders (default: a temporary folder)")
    parser.add_argument(
        "--val-objects", type=int, default=4, help="objects scored per val image (seeded; 0: all)"
    )
    parser.add_argument(
        "--base", default=None, help="clicks: the LoRA checkpoint (default: --work's lora run)"
    )
    parser.add_argument("--override", nargs="*", default=[], help="extra key=value for every run")
    parser.add_argument("--output", default="bench_finetune.json", help="the JSON of the figures")
    parser.add_argument(
        "--picture", default=None, help="PNG: one-point answers zero-shot vs best mode"
    )
    parser.add_argument("--picture-images", type=int, default=3)
    parser.add_argument(
        "--score-only",
        action="store_true",
        help="score the last.ckpt of runs already under --work instead of training",
    )
    parser.add_argument("--device", choices=sorted(DEVICES), default="cpu")
    parser.add_argument(
        "--precision", default=None, help="training precision (default: 32-true, cuda bf16-mixed)"
    )
    args = parser.parse_args(argv)
    args.precision = args.precision or DEFAULT_PRECISION[args.device]
    machine = check_device(args.device)
    args.steps = parse_steps(args.steps)
    args.val_objects = args.val_objects or None
    args.work = args.work or tempfile.mkdtemp(prefix="bench_finetune_")
    ctx = mp.get_context("spawn")
    results = []
    for mode in args.modes:
        queue = ctx.Queue()
        start = time.perf_counter()
        child = ctx.Process(target=run_mode, args=(mode, args, queue))
        child.start()
        result = wait_for_result(mode, child, queue)
        child.join()
        result["wall_s"] = time.perf_counter() - start
        results.append(result)
        print_table(results)
        report = {
            "machine": machine,
            "device": args.device,
            "training_precision": args.precision,
            "protocol": PROTOCOL,
            "clicks": list(CLICKS),
            "results": results,
        }
        Path(args.output).write_text(json.dumps(report, indent=2))
    if args.picture:
        trained = [r for r in results if r["mode"] != "zero_shot"]
        best = max(trained, key=lambda r: r["dsb_val"]["miou/one_point"], default=None)
        checkpoints = {"zero-shot": CHECKPOINT}
        if best:
            checkpoints[f"{best['mode']} fine-tuned"] = best["checkpoint"]
        spec = dataset_specs(Path(args.data))["dsb_val"]
        draw_picture(Path(args.picture), checkpoints, spec, args.picture_images)


if __name__ == "__main__":
    main()

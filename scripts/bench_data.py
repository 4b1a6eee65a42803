"""Training samples per second through SamDataModule, with augmentation, per worker count.

Example (coco-mini beside the checkout, the augmentation of conf/data/coco.yaml, 1024 px):

    .venv/bin/python scripts/bench_data.py --workers 0 1 2 --batches 30

Other formats: --format sa1b --root DIR, or --format folder --images DIR --masks DIR
--mask-type per_object. Each worker count gets a fresh loader; its first batch (worker
start-up) is timed separately and left out of the rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from samft.data.datamodule import SamDataModule
from samft.data.prompts import PromptSampler

ROOT = Path(__file__).resolve().parents[1]
COCO_MINI = ROOT.parent / "shared" / "data" / "coco-mini"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", default="coco", choices=["coco", "sa1b", "folder"])
    parser.add_argument("--annotations", default=str(COCO_MINI / "annotations_train.json"))
    parser.add_argument("--images", default=str(COCO_MINI / "images"))
    parser.add_argument("--root", help="sa1b: folder of the per-image JSON files")
    parser.add_argument("--masks", help="folder: folder of the mask files")
    parser.add_argument("--mask-type", default="instance", help="folder: mask layout")
    parser.add_argument(
        "--augment-config",
        default=str(ROOT / "conf" / "data" / "coco.yaml"),
        help="YAML whose train_augment list is used ('none' for no augmentation)",
    )
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-objects", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=30, help="timed batches per worker count")
    parser.add_argument("--json", help="also write the results to this JSON file")
    return parser.parse_args(argv)


def dataset_spec(args: argparse.Namespace) -> dict:
    if args.format == "coco":
        return {"format": "coco", "annotations": args.annotations, "images": args.images}
    if args.format == "sa1b":
        return {"format": "sa1b", "root": args.root}
    return {
        "format": "folder",
        "images": args.images,
        "masks": args.masks,
        "mask_type": args.mask_type,
    }


def train_augment(path: str) -> list | None:
    if path == "none":
        return None
    return OmegaConf.to_container(OmegaConf.load(path).train_augment)


def measure(args: argparse.Namespace, workers: int) -> dict:
    """Time `args.batches` training batches with `workers` DataLoader workers."""
    torch.manual_seed(0)
    datamodule = SamDataModule(
        train=dataset_spec(args),
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_workers=workers,
        max_objects_per_image=args.max_objects,
        train_augment=train_augment(args.augment_config),
        prompts=PromptSampler(),
    )
    loader = datamodule.train_dataloader()
    start = time.perf_counter()
    batches = iter(loader)
    next(batches)
    first = time.perf_counter() - start
    images = objects = done = 0
    start = time.perf_counter()
    while done < args.batches:
        try:
            batch = next(batches)
        except StopIteration:  # next epoch (workers persist)
            batches = iter(loader)
            continue
        images += len(batch.images)
        objects += len(batch.prompt_types)
        done += 1
    seconds = time.perf_counter() - start
    del batches, loader
    return {
        "workers": workers,
        "samples_per_s": images / seconds,
        "objects_per_s": objects / seconds,
        "batches": done,
        "seconds": seconds,
        "first_batch_s": first,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like a DataLoader worker; keeps worker counts comparable
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> list[dict]:
    results = []
    print(
        f"format={args.format} image_size={args.image_size} batch_size={args.batch_size} "
        f"max_objects={args.max_objects} augment={args.augment_config}"
    )
    print(f"{'workers':>7} {'samples/s':>10} {'objects/s':>10} {'first batch s':>14}")
    for workers in args.workers:
        row = measure(args, workers)
        results.append(row)
        print(
            f"{row['workers']:>7} {row['samples_per_s']:>10.1f} {row['objects_per_s']:>10.1f} "
            f"{row['first_batch_s']:>14.2f}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])

"""Prompt-free instances side by side: ground truth | point grid | instance head, on the same
images, each panel titled with the image's mSA and SA50 (`samft.train.instance_metrics`).

The grid runs samft's `AutomaticMaskGenerator` on `--grid`'s SAM with the thresholds given
(as `eval mode=instance` chose them), its masks painted into one label image as `eval`
paints them; the head runs `--head`'s instance head with the watershed thresholds stored in
its sidecar. Example (docs/results.md, "Instance head"):

    .venv/bin/python scripts/picture_instances.py --grid RUN_K/checkpoints/last.ckpt \\
      --pred-iou-thresh 0.5 --stability-score-thresh 0.85 --covered-thresh 0.5 \\
      --head exports/lms_instance.pth --picture docs/results_dsb_grid_vs_head.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np
import torch

from samft.data.readers import build_reader
from samft.evaluate.automatic import ground_truth_labels
from samft.infer.automatic import AutomaticMaskGenerator
from samft.infer.head_segment import HeadInstanceSegmenter
from samft.infer.instance_overlay import draw_instances
from samft.infer.record_masks import records_to_labels
from samft.train.instance_metrics import instance_scores
from samft.weights import load_instance_head, load_sam
from samft.weights.instance_head import head_thresholds

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "dsb-nuclei" / "val"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", required=True, help="checkpoint whose SAM runs the grid")
    parser.add_argument("--head", required=True, help="checkpoint or export with a head")
    parser.add_argument("--images", default=str(DEFAULT_DATA / "images"))
    parser.add_argument("--masks", default=str(DEFAULT_DATA / "masks"))
    parser.add_argument("--names", nargs="*", default=None, help="image files (default: first)")
    parser.add_argument("--count", type=int, default=3, help="images, without --names")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--covered-thresh", type=float, default=1.0)
    parser.add_argument("--picture", required=True, help="PNG to write")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def title(name: str, labels: np.ndarray, truth: np.ndarray) -> str:
    scores = instance_scores(labels, truth)
    return f"{name}: mSA {scores['mSA']:.2f}, SA50 {scores['SA50']:.2f}, {scores['n_pred']} found"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reader = build_reader({"format": "folder", "images": args.images, "masks": args.masks}, "data")
    records = reader.records
    if args.names:
        by_name = {Path(r.path).name: r for r in records}
        missing = [n for n in args.names if n not in by_name]
        if missing:
            raise SystemExit(f"--names: {missing} not in {args.images}")
        records = [by_name[n] for n in args.names]
    records = records[: len(args.names) if args.names else args.count]
    grid = AutomaticMaskGenerator(
        load_sam(args.grid),
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        covered_thresh=args.covered_thresh,
    )
    head = load_instance_head(args.head)
    if head is None:
        raise SystemExit(f"--head {args.head}: the checkpoint holds no instance head")
    segmenter = HeadInstanceSegmenter(load_sam(args.head), head, **head_thresholds(args.head))

    fig, axes = plt.subplots(len(records), 3, figsize=(9, 3.1 * len(records)), squeeze=False)
    for row, record in enumerate(records):
        loaded = reader.load(record, range(len(record.objects)))
        image, truth = loaded.image, ground_truth_labels(loaded.masks)
        with torch.no_grad():
            grid_labels = records_to_labels(grid.generate(image), image.shape)
            head_labels = segmenter.labels(image)
        panels = [
            (f"{Path(record.path).name}: {int(truth.max())} annotated", truth),
            (title("grid", grid_labels, truth), grid_labels),
            (title("head", head_labels, truth), head_labels),
        ]
        for col, (text, labels) in enumerate(panels):
            axes[row, col].imshow(draw_instances(image, labels.astype(np.int64)))
            axes[row, col].set_title(text, fontsize=7)
            axes[row, col].axis("off")
        print(f"{record.path}: {panels[1][0]} | {panels[2][0]}", flush=True)
    fig.tight_layout()
    out = Path(args.picture)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"picture: {out} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()

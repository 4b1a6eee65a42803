"""scripts/bench_automatic.py --head and scripts/picture_instances.py on a tiny checkpoint
with a (random) instance head: their counts and scores equal the generators run by hand."""

from __future__ import annotations

import re

import numpy as np
import torch
from head_runs import save_head_checkpoint
from PIL import Image

from samft.data.images import read_rgb
from samft.data.readers import build_reader
from samft.evaluate.automatic import ground_truth_labels
from samft.infer.automatic import AutomaticMaskGenerator
from samft.infer.head_segment import HeadInstanceSegmenter
from samft.train.instance_metrics import instance_scores
from samft.weights import load_instance_head, load_sam
from samft.weights.instance_head import head_thresholds


def _by_hand(checkpoint, image: np.ndarray) -> tuple[HeadInstanceSegmenter, list, list]:
    head = HeadInstanceSegmenter(
        load_sam(checkpoint), load_instance_head(checkpoint), **head_thresholds(checkpoint)
    )
    grid = AutomaticMaskGenerator(
        load_sam(checkpoint), points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    with torch.no_grad():
        return head, grid.generate(image), head.generate(image)


def test_bench_times_the_grid_and_the_head_of_one_checkpoint(scripts, capsys, tmp_path):
    checkpoint = tmp_path / "last.ckpt"
    save_head_checkpoint(checkpoint, "tiny", 64)
    bench = scripts("bench_automatic")
    bench.main(
        ["--head", str(checkpoint), "--points-per-side", "2", "--repeats", "2",
         "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    )  # fmt: skip
    out = capsys.readouterr().out
    found = re.findall(r"^(grid|head):.* (\d+) masks \(median\)$", out, re.M)
    counts = {name: int(count) for name, count in found}
    _, grid, head = _by_hand(checkpoint, read_rgb(bench.DEFAULT_IMAGE))
    assert counts == {"grid": len(grid), "head": len(head)}, out
    ratio = re.search(r"head speed-up over the grid: ([\d.]+)x wall", out)
    assert ratio and float(ratio.group(1)) > 0, out


def test_picture_titles_score_each_generator_against_the_truth(
    scripts, capsys, tmp_path, shared_data
):
    checkpoint = tmp_path / "last.ckpt"
    save_head_checkpoint(checkpoint, "tiny", 64)
    val = shared_data / "dsb-nuclei" / "val"
    picture = tmp_path / "grid_vs_head.png"
    scripts("picture_instances").main(
        ["--grid", str(checkpoint), "--head", str(checkpoint), "--count", "1",
         "--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
         "--picture", str(picture), "--threads", "1"]
    )  # fmt: skip
    assert Image.open(picture).size[0] > 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "| head:" in x)

    reader = build_reader({"format": "folder", "images": val / "images", "masks": val / "masks"})
    record = reader.records[0]
    loaded = reader.load(record, range(len(record.objects)))
    truth = ground_truth_labels(loaded.masks)
    segmenter, _, _ = _by_hand(checkpoint, loaded.image)
    scores = instance_scores(segmenter.labels(loaded.image), truth)
    expected = f"head: mSA {scores['mSA']:.2f}, SA50 {scores['SA50']:.2f}, {scores['n_pred']} found"
    assert line.startswith(str(record.path)) and line.endswith(expected), line

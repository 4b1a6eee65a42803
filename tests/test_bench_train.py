"""scripts/bench_train.py runs: the decoder table, the training table per precision, and
SAM 2's rows with a naive loop on Meta's `sam2` that computes samft's loss;
scripts/bench_cpu_bf16.py: a row per matrix size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from samft.model.transforms import SQUARE_RESIZE

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_train.py"


def test_decoder_table_for_tiny(scripts, capsys):
    bench = scripts("bench_train")
    bench.main(["--variant", "tiny", "--decoder", "--objects", "1", "2", "--steps", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("decoder fwd+bwd per prompt, tiny @ 256px (16x16 tokens)")
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(float(v) > 0 for r in rows for v in r[1:])


def test_training_table_has_a_row_per_precision():
    """Rows run in spawned children, so the script runs as a user runs it."""
    args = ["--variant", "tiny", "--rows", "cached", "--objects", "1", "--steps", "1"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--precision", "fp32", "bf16"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.strip().splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [("cached", "fp32"), ("cached", "bf16")]
    assert float(rows[0][6]) == 1.0  # fp32 against itself
    assert float(rows[1][6]) > 0 and float(rows[1][3]) > 0


def test_sam2_rows_and_naive_loss_equals_samft(scripts):
    """sam2_tiny: the naive row (Meta's `sam2` modules, one decoder call per prompt), the
    samft row and the cached row (three fp16 levels through `to_cached`) each time their
    steps; on the same batch 0 the naive loop and samft's batched step give the same loss.
    Rows run in-process here (the script runs each in a spawned child)."""
    bench = scripts("bench_train")
    args = bench.parse_args(["--variant", "sam2_tiny", "--images", "2", "--steps", "1"])
    args.threads = 1
    assert args.image_size == 256  # sam2_tiny's own size
    batches, _ = bench._batches(args, 4, SQUARE_RESIZE)
    labels = batches[0].prompts.labels
    # batch 0 holds a box and a single positive point (the multimask answer): both paths
    assert (labels == 2).any(dim=1).any()
    assert ((labels == 1).sum(dim=1) == 1).logical_and((labels != -1).sum(dim=1) == 1).any()

    rows: list[dict] = []

    class Rows:
        def put(self, row: dict) -> None:
            rows.append(row)

    for row in ("naive", "samft", "cached"):
        bench._run_row(row, 4, "fp32", args, Rows())
    by_row = {r["row"]: r for r in rows}
    assert list(by_row) == ["naive", "samft", "cached"]
    prompts = int(batches[1].prompts.labels.shape[0])
    for r in rows:
        assert r["prompts"] == prompts and r["images"] == 2 and r["seconds"] > 0
    naive, samft, cached = (by_row[k]["first_loss"] for k in ("naive", "samft", "cached"))
    assert samft > 0
    assert naive == pytest.approx(samft, rel=1e-5)
    assert cached == pytest.approx(samft, rel=1e-3)  # fp16 features


def test_cpu_bf16_table_has_a_row_per_size(scripts):
    bench = scripts("bench_cpu_bf16")
    rows = bench.main(["--sizes", "8", "16", "--repeats", "1"])
    assert [row["n"] for row in rows] == [8, 16]
    for row in rows:
        assert row["fp32_s"] > 0 and row["bf16_s"] > 0
        assert row["ratio"] == row["bf16_s"] / row["fp32_s"]

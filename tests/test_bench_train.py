"""scripts/bench_train.py runs: the decoder table, and the training table per precision;
scripts/bench_cpu_bf16.py: a row per matrix size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_cpu_bf16_table_has_a_row_per_size(scripts):
    bench = scripts("bench_cpu_bf16")
    rows = bench.main(["--sizes", "8", "16", "--repeats", "1"])
    assert [row["n"] for row in rows] == [8, 16]
    for row in rows:
        assert row["fp32_s"] > 0 and row["bf16_s"] > 0
        assert row["ratio"] == row["bf16_s"] / row["fp32_s"]

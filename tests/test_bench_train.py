"""scripts/bench_train.py runs: the decoder table for the tiny variant."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_train.py"


def test_decoder_table_for_tiny(capsys):
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--variant", "tiny", "--decoder", "--objects", "1", "2", "--steps", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("decoder fwd+bwd per prompt, tiny @ 256px (16x16 tokens)")
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(float(v) > 0 for r in rows for v in r[1:])

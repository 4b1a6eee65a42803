"""scripts/bench_data.py runs end to end on coco-mini (tiny settings)."""

from __future__ import annotations


def test_bench_data_smoke(scripts, coco_mini, tmp_path, capsys):
    bench = scripts("bench_data")
    out = tmp_path / "bench.json"
    argv = ["--annotations", str(coco_mini / "annotations_val.json")]
    argv += ["--images", str(coco_mini / "images"), "--image-size", "64", "--batch-size", "2"]
    results = bench.main([*argv, "--workers", "0", "--batches", "15", "--json", str(out)])
    assert [r["workers"] for r in results] == [0]
    assert results[0]["batches"] == 15  # runs past the end of an epoch (14 batches)
    assert results[0]["samples_per_s"] > 0 and out.is_file()
    assert "samples/s" in capsys.readouterr().out

"""`python -m samft cache` stopped by a signal, as a user meets it: what it finished is kept
whole and a second run completes the cache from there."""

from __future__ import annotations

import json
import signal

from demo_cli import run_samft, stop_when_it_says
from safetensors.torch import load_file


def test_sigterm_stops_cache_keeping_whole_shards(shared_data, tmp_path):
    """A stop while the embeddings are computed: exit 143 and one line; every shard the
    manifest lists reads back whole, no temporary file is left, and the same command run
    again reuses them and completes the cache."""
    dsb = shared_data / "dsb-nuclei"
    args = [
        "cache",
        "model=tiny",
        "finetune=decoder",
        "cache.dir=cache",
        "cache.batch_size=1",
        "cache.shard_mb=0.001",  # one embedding a shard: a stop lands between shards
        f"data.train.annotations={dsb}/val.json",
        f"data.train.images={dsb}/val/images",
        f"data.val.annotations={dsb}/val.json",
        f"data.val.images={dsb}/val/images",
        "data.train_augment=[]",
    ]
    code, said = stop_when_it_says(args, tmp_path, "cache: 1 / 16 embeddings computed")
    assert code == 128 + signal.SIGTERM, said[-3000:]
    assert [line for line in said.splitlines() if "stopped by" in line] == [
        "samft cache: stopped by SIGTERM; the files it finished are complete (each is written "
        "whole), the rest is not written"
    ]
    assert "Traceback" not in said and "16 / 16" not in said
    cache = tmp_path / "cache"
    manifest = json.loads((cache / "manifest.json").read_text())
    assert not manifest["complete"] and 1 <= len(manifest["entries"]) < 16
    for shard, info in manifest["shards"].items():
        assert (cache / shard).stat().st_size == info["bytes"]
        assert load_file(cache / shard)  # whole: safetensors reads it back
    assert not list(tmp_path.rglob("*.tmp"))
    kept = len(manifest["entries"])

    again = run_samft(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{16 - kept} embeddings computed, {kept} reused, 16 in total" in again.stdout
    assert json.loads((cache / "manifest.json").read_text())["complete"]

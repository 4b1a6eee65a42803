"""`python -m samft cache/train/export` on SAM 2 as a user runs them: the `sam2_decoder`
recipe on `sam2_tiny` started from a Meta-layout file, its encoder cached and frozen; the
export loads strictly in Meta's loader with the video parts it came with."""

from __future__ import annotations

import csv

import pytest
import torch
from demo_cli import run_samft
from reference_sam2 import build_tiny_meta, import_sam2, perturb_

from samft.model.sam2.carried import is_video_part


@pytest.mark.slow
def test_sam2_decoder_recipe_trains_from_its_cache_and_exports_for_meta(shared_data, tmp_path):
    meta = import_sam2()
    torch.manual_seed(0)
    start = perturb_(build_tiny_meta(), seed=11)
    meta_file = tmp_path / "sam2_tiny.pt"
    torch.save({"model": start.state_dict()}, meta_file)  # as Meta ships SAM 2
    dsb = shared_data / "dsb-nuclei"
    common = [
        "+experiment=sam2_decoder",
        "model=sam2_tiny",
        f"model.checkpoint={meta_file}",
        "cache.dir=cache",
        f"data.train.annotations={dsb}/val.json",  # 16 images: quick
        f"data.train.images={dsb}/val/images",
        f"data.val.annotations={dsb}/val.json",
        f"data.val.images={dsb}/val/images",
        "logger=csv",
    ]
    cached = run_samft(["cache", *common], tmp_path)
    assert cached.returncode == 0, cached.stderr[-3000:]

    run = tmp_path / "run"
    trained = run_samft(
        ["train", *common, f"hydra.run.dir={run}", "trainer.max_steps=4"]
        + ["trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false"],
        tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "image embeddings read from" in trained.stdout + trained.stderr
    with open(run / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(rows) == 4 and all(r["train/loss_object_score"] for r in rows)

    exported = run_samft(
        ["export", f"checkpoint={run}/checkpoints/last.ckpt", "output=exported/tuned"], tmp_path
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    theirs = build_tiny_meta()
    meta.build_sam._load_checkpoint(theirs, str(tmp_path / "exported" / "tuned.pth"))  # strict
    before, after = start.state_dict(), theirs.state_dict()
    for key, tensor in before.items():
        frozen = is_video_part(key) or key.startswith("image_encoder.") or key == "no_mem_embed"
        if frozen or ".conv_s" in key:  # frozen with the encoder: what the cache holds
            assert torch.equal(after[key], tensor), key
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    assert changed and all(
        k.startswith(("sam_mask_decoder.", "sam_prompt_encoder.")) for k in changed
    )

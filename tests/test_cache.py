"""The embedding cache on real CT slices: what it stores is what the encoder computes for
the pixels a sample shows, training reads it, and a stale or partial cache is refused."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import albumentations as A
import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from samft.commands.cache import cache_embeddings
from samft.commands.common import open_embedding_cache
from samft.data.cache import (
    CacheError,
    CacheJob,
    EmbeddingCache,
    build_cache,
    cache_key,
    flip_probabilities,
    orientations_for,
    why_not_cached,
)
from samft.data.collate import collate_samples
from samft.data.datamodule import SamDataModule
from samft.data.errors import DataError
from samft.data.prompts import PromptSampler
from samft.data.readers import build_reader
from samft.train.module import SamFineTuner

FP16_ATOL = 5e-3  # embeddings are stored in half precision


@pytest.fixture
def ct_copy(ct_organs, tmp_path) -> Path:
    """A private copy of the CT data, so tests may touch its files."""
    return Path(shutil.copytree(ct_organs, tmp_path / "ct"))


def _spec(root: Path) -> dict:
    return {"format": "coco", "annotations": str(root / "annotations.json"), "images": str(root)}


def _module(encoder: str = "frozen") -> SamFineTuner:
    torch.manual_seed(0)
    return SamFineTuner(
        model={"variant": "tiny"},
        finetune={"image_encoder": encoder},
        optim={"lr": 1e-3, "warmup_steps": 0, "schedule": "constant"},
        interactive={"val_clicks": [1]},
    )


def _embed(sam):
    def embed(images):
        return sam.image_encoder(torch.cat([sam.preprocess(i[None].float()) for i in images]))

    return embed


def _jobs(root: Path, orientations=("none", "h")) -> list[CacheJob]:
    reader = build_reader(_spec(root), "test")
    return [
        CacheJob(r.path, tuple(orientations), lambda r=r: reader.load_image(r))
        for r in reader.records
    ]


def _datamodule(root: Path, augment=None, embedding_cache=None) -> SamDataModule:
    return SamDataModule(
        train=_spec(root),
        val=_spec(root),
        image_size=256,
        batch_size=2,
        max_objects_per_image=3,
        train_augment=augment,
        prompts=PromptSampler(point_prob=0.5, box_prob=0.5),
        embedding_cache=embedding_cache,
    )


@pytest.fixture
def built(ct_copy, tmp_path):
    """(module, cache dir, data root): a frozen tiny model's cache of the CT images."""
    module = _module()
    sam = module.model.eval()
    counts = build_cache(tmp_path / "cache", cache_key(sam), _jobs(ct_copy), _embed(sam))
    sam.train()
    assert counts == {"computed": 10, "reused": 0, "entries": 10}
    return module, tmp_path / "cache", ct_copy


def test_flip_only_pipelines_are_servable_others_say_why():
    both = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.25)])
    assert flip_probabilities(both) == ((0.5, 0.25), "")
    assert orientations_for((0.5, 0.25)) == ["none", "h", "v", "hv"]
    assert orientations_for((0.5, 0.0)) == ["none", "h"]
    assert flip_probabilities(None) == ((0.0, 0.0), "")
    affine = A.Compose([A.HorizontalFlip(p=0.5), A.Affine(scale=(0.9, 1.1), p=0.5)])
    assert "Affine" in why_not_cached("frozen", affine)
    assert "lora" in why_not_cached("lora", None)
    assert why_not_cached("frozen", both) == ""


@pytest.mark.filterwarnings("ignore:You are trying to `self.log()`")
def test_cached_embeddings_are_what_training_would_compute(built):
    """Samples from a cached dataset carry the embedding of the orientation they show:
    equal, up to fp16, to the encoder's output on the batch's (flipped) pixels."""
    module, root, data = built
    dm = _datamodule(data, augment=[{"name": "HorizontalFlip", "p": 0.5}])
    dataset = dm.build_dataset("train")
    cache = EmbeddingCache.open(root, cache_key(module.model))
    dataset.use_embeddings(cache, (0.5, 0.0))
    torch.manual_seed(3)
    samples = [dataset[i % len(dataset)] for i in range(8)]
    batch = collate_samples(samples)
    assert batch.embeddings.dtype == torch.float16
    with torch.no_grad():
        direct = module.encode_images(batch.images)
    torch.testing.assert_close(batch.embeddings.float(), direct, atol=FP16_ATOL, rtol=0)
    # both orientations occurred, and a flipped embedding is not the unflipped one
    first = dataset.record(0).path
    plain, flipped = cache.get(first, "none"), cache.get(first, "h")
    assert (plain.float() - flipped.float()).abs().max() > 0.1

    # the training loss from the cache equals the loss from the encoder
    module.train()
    with torch.no_grad():
        cached_loss = module.training_step(batch, 0)
        uncached = dataclasses.replace(batch, embeddings=None)
        torch.manual_seed(0)
        plain_loss = module.training_step(uncached, 0)
    torch.testing.assert_close(cached_loss, plain_loss, atol=1e-3, rtol=1e-3)


def test_stale_cache_is_refused_with_the_reason(built):
    module, root, data = built
    key = cache_key(module.model)
    other = _module()
    with torch.no_grad():
        other.model.image_encoder.neck[0].weight.add_(1e-3)
    with pytest.raises(CacheError, match="stale: built for other encoder weights"):
        EmbeddingCache.open(root, cache_key(other.model))
    bigger = type(key)(**{**key.__dict__, "image_size": 512})
    with pytest.raises(CacheError, match="image_size is 256, expected 512"):
        EmbeddingCache.open(root, bigger)

    cache = EmbeddingCache.open(root, key)
    images = [r.path for r in build_reader(_spec(data), "t").records]
    cache.check_covers(images, ["none", "h"])
    with pytest.raises(CacheError, match=r"lacks 5 embedding\(s\).*\(v\)"):
        cache.check_covers(images, ["none", "v"])
    stat = images[0].stat()
    os.utime(images[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(CacheError, match="1 image file\\(s\\) changed"):
        cache.check_covers(images, ["none"])


def test_partial_or_damaged_cache_is_refused_and_a_rerun_completes_it(built):
    module, root, data = built
    key = cache_key(module.model)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["complete"] = False
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="partial"):
        EmbeddingCache.open(root, key)
    # a rerun keeps what is there and adds what is missing
    counts = build_cache(
        root, key, _jobs(data, ("none", "h", "v")), _embed(module.model.eval()), shard_mb=0.01
    )
    assert counts == {"computed": 5, "reused": 10, "entries": 15}
    assert len(list(root.glob("shard-*.safetensors"))) > 1
    cache = EmbeddingCache.open(root, key)
    shard = next(iter(cache.manifest["shards"]))
    with open(root / shard, "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(CacheError, match=f"shard {shard} is missing or has a different size"):
        EmbeddingCache.open(root, key)
    with pytest.raises(CacheError, match="no embedding cache at"):
        EmbeddingCache.open(root / "elsewhere", key)


def test_datamodule_serves_the_cache_and_training_reads_it(built):
    module, root, data = built
    cache = EmbeddingCache.open(root, cache_key(module.model))
    dm = _datamodule(data, augment=[{"name": "HorizontalFlip", "p": 0.5}], embedding_cache=cache)
    trainer = L.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        num_sanity_val_steps=0, limit_val_batches=1, enable_model_summary=False,
    )  # fmt: skip
    seen = []
    module.on_train_batch_start = lambda batch, i: seen.append(batch.embeddings is not None)
    trainer.fit(module, datamodule=dm)
    assert seen == [True]
    assert all(ds.embeddings is not None for ds in dm.datasets.values())


def test_open_embedding_cache_logs_why_not_and_datamodule_refuses_other_augmentation(built, caplog):
    module, root, data = built
    cache = EmbeddingCache.open(root, cache_key(module.model))
    with pytest.raises(DataError, match="cannot serve this training: data.train_augment has"):
        _datamodule(data, augment=[{"name": "Affine", "scale": [0.9, 1.1]}], embedding_cache=cache)
    cfg = OmegaConf.create(
        {"cache": {"dir": str(root)}, "data": {"train_augment": [{"name": "Affine", "p": 1.0}]}}
    )
    with caplog.at_level(logging.WARNING, logger="samft.commands.common"):
        assert open_embedding_cache(cfg, module) is None
    assert "not used: data.train_augment has Affine" in caplog.text
    cfg.data.train_augment = [{"name": "VerticalFlip", "p": 0.5}]
    assert isinstance(open_embedding_cache(cfg, module), EmbeddingCache)


def test_cache_command_composes_the_train_config(ct_copy, tmp_path):
    overrides = [
        "model=tiny",
        "finetune=decoder",
        f"data.train.annotations={ct_copy}/annotations.json",
        f"data.train.images={ct_copy}",
        f"data.val.annotations={ct_copy}/annotations.json",
        f"data.val.images={ct_copy}",
        "data.num_workers=0",
        "data.train_augment=[{name: VerticalFlip, p: 0.5}]",
        f"cache.dir={tmp_path}/c",
        "cache.device=cpu",
    ]
    with initialize_config_module("samft.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "output_dir=."])
        counts = cache_embeddings(cfg)
        assert counts["computed"] == counts["entries"] > 0
        entries = json.loads((tmp_path / "c" / "manifest.json").read_text())["entries"]
        assert {name.rsplit("#", 1)[1] for name in entries} == {"none", "v"}
        assert cache_embeddings(cfg)["computed"] == 0
        cfg = compose("train", overrides=[*overrides, "output_dir=.", "finetune=lora"])
        with pytest.raises(CacheError, match="finetune.image_encoder = lora"):
            cache_embeddings(cfg)


def test_a_shard_damaged_in_place_is_refused_when_read(built):
    """Same size, other bytes: the per-entry checksum catches it; training never sees it."""
    module, root, data = built
    cache = EmbeddingCache.open(root, cache_key(module.model))
    name, entry = next(iter(cache.entries.items()))
    path, orientation = name.rsplit("#", 1)
    assert cache.get(path, orientation).dtype == torch.float16
    shard = root / entry["shard"]
    size = shard.stat().st_size
    with open(shard, "r+b") as handle:  # flip bytes in the data area, keep the size
        handle.seek(size - 4096)
        block = handle.read(64)
        handle.seek(size - 4096)
        handle.write(bytes(b ^ 0xFF for b in block))
    assert shard.stat().st_size == size
    damaged = EmbeddingCache.open(root, cache_key(module.model))  # sizes still match
    with pytest.raises(CacheError, match=rf"shard {entry['shard']} is damaged"):
        for name in damaged.entries:
            damaged.get(*name.rsplit("#", 1))


def test_content_stamp_notices_an_edit_that_keeps_size_and_mtime(ct_copy, tmp_path):
    module = _module()
    sam = module.model.eval()
    key = cache_key(sam, "content")
    jobs = _jobs(ct_copy)
    build_cache(tmp_path / "c", key, jobs, _embed(sam))
    build_cache(tmp_path / "m", cache_key(sam), jobs, _embed(sam))
    image = jobs[0].path
    stat = os.stat(image)
    pixels = bytearray(image.read_bytes())
    pixels[-100] ^= 0xFF  # an edit of the same size...
    image.write_bytes(bytes(pixels))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ...with the old mtime
    paths = [job.path for job in jobs]
    with pytest.raises(CacheError, match="changed since they were cached"):
        EmbeddingCache.open(tmp_path / "c", key).check_covers(paths, ["none"])
    # the cheap default stamp cannot see it (which is why the content stamp exists)
    EmbeddingCache.open(tmp_path / "m", cache_key(sam)).check_covers(paths, ["none"])
    with pytest.raises(CacheError, match="image_stamp is 'mtime', expected 'content'"):
        EmbeddingCache.open(tmp_path / "m", key)


def test_cache_key_of_a_tinyvit_encoder_with_batchnorm_counters():
    """BatchNorm's 0-dim int64 `num_batches_tracked` is hashed too (LiteMedSAM, MobileSAM)."""
    from samft.model.registry import build_sam

    sam = build_sam("lite_medsam")
    key = cache_key(sam)
    assert key.normalization == "min_max" and key.resize_interpolation == "area"
    bn = next(m for m in sam.image_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.num_batches_tracked += 1
    assert cache_key(sam).encoder_sha256 != key.encoder_sha256


def test_a_shard_with_a_damaged_header_names_the_shard(built):
    """The JSON header of a shard overwritten in place (same size): one sentence naming the
    shard and how to rebuild it, not safetensors' own error."""
    module, root, _ = built
    cache = EmbeddingCache.open(root, cache_key(module.model))
    name, entry = next(iter(cache.entries.items()))
    shard = root / entry["shard"]
    with open(shard, "r+b") as handle:
        handle.seek(8)  # after the header's length: its JSON text
        handle.write(b"}}}{{{")
    damaged = EmbeddingCache.open(root, cache_key(module.model))
    with pytest.raises(CacheError) as caught:
        damaged.get(*name.rsplit("#", 1))
    message = str(caught.value)
    assert f"shard {entry['shard']} cannot be read" in message
    assert "run `python -m samft cache` again" in message and "\n" not in message


def test_sam2_levels_round_trip_through_the_cache_and_training_reads_them(ct_copy, tmp_path):
    """SAM 2 caches its three feature levels (one tensor each, each checksummed: 128 KiB
    per image for `sam2_tiny`, 8 MiB at 1024 px and C = 256); a frozen-encoder SAM 2 reads
    them back as the encoder computes them and trains the same loss from them. The key
    covers `no_mem_embed` and `conv_s0` / `conv_s1`, which the cached levels went through."""
    from samft.model.batched import encode_images
    from samft.model.transforms import SQUARE_RESIZE

    torch.manual_seed(0)
    module = SamFineTuner(
        model={"variant": "sam2_tiny"},
        finetune={"image_encoder": "frozen"},
        loss={"iou_loss": "l1", "object_score_weight": 1.0},
        interactive={"val_clicks": [1]},
    )
    sam = module.model.eval()
    key = cache_key(sam)
    assert key.resize_interpolation == SQUARE_RESIZE and key.normalization == "imagenet"
    root = tmp_path / "cache2"
    counts = build_cache(
        root, key, _jobs(ct_copy), lambda images: sam.to_cached(encode_images(sam, images))
    )
    assert counts == {"computed": 10, "reused": 0, "entries": 10}
    manifest = json.loads((root / "manifest.json").read_text())
    entry = next(iter(manifest["entries"].values()))
    assert len(entry["tensor"]) == len(entry["digest"]) == 3
    per_image = (64 * 16 * 16 + 8 * 64 * 64 + 16 * 32 * 32) * 2  # fp16 bytes
    shard_bytes = sum(info["bytes"] for info in manifest["shards"].values())
    assert 10 * per_image < shard_bytes < 10 * per_image + 16384  # + the safetensors header

    dm = SamDataModule(
        train=_spec(ct_copy),
        val=_spec(ct_copy),
        image_size=256,
        resize_interpolation=SQUARE_RESIZE,
        batch_size=2,
        max_objects_per_image=3,
        train_augment=[{"name": "HorizontalFlip", "p": 0.5}],
        prompts=PromptSampler(point_prob=0.5, box_prob=0.5),
        embedding_cache=EmbeddingCache.open(root, key),
    )
    dataset = dm.build_dataset("train")
    dataset.use_embeddings(EmbeddingCache.open(root, key), (0.5, 0.0))
    torch.manual_seed(3)
    batch = collate_samples([dataset[i % len(dataset)] for i in range(4)])
    assert [level.shape for level in batch.embeddings] == [
        (4, 64, 16, 16),
        (4, 8, 64, 64),
        (4, 16, 32, 32),
    ]
    with torch.no_grad():
        direct = sam.to_cached(module.encode_images(batch.images))
    for cached, level in zip(batch.embeddings, direct, strict=True):
        assert cached.dtype == torch.float16
        torch.testing.assert_close(cached.float(), level, atol=FP16_ATOL, rtol=0)

    module.train()
    with torch.no_grad():
        cached_loss = module.training_step(batch, 0)
        plain_loss = module.training_step(dataclasses.replace(batch, embeddings=None), 0)
    torch.testing.assert_close(cached_loss, plain_loss, atol=1e-3, rtol=1e-3)

    with torch.no_grad():
        sam.sam_mask_decoder.conv_s0.weight.add_(1e-3)  # frozen with the encoder: in the key
    with pytest.raises(CacheError, match="stale: built for other encoder weights"):
        EmbeddingCache.open(root, cache_key(sam))


@pytest.mark.parametrize("write", ["shard", "manifest"])
def test_a_stop_inside_a_write_leaves_no_temporary_file(built, monkeypatch, write):
    """A signal (here KeyboardInterrupt) halfway through writing a shard or the manifest:
    the files there before, the manifest too, are unchanged, and no half-written temporary
    file is left (a whole new shard the manifest does not list yet is overwritten by the
    next run)."""
    from samft.data.cache import writer

    module, root, data = built
    before = {p.name: p.read_bytes() for p in root.iterdir()}

    def half_then_stop(path, text):
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt

    if write == "shard":
        monkeypatch.setattr(writer, "save_file", lambda tensors, path: half_then_stop(path, ""))
    else:
        monkeypatch.setattr(Path, "write_text", lambda self, text: half_then_stop(self, text))
    with pytest.raises(KeyboardInterrupt):
        build_cache(root, cache_key(module.model), _jobs(data, ("v",)), _embed(module.model.eval()))
    after = {p.name: p.read_bytes() for p in root.iterdir()}
    assert {name: after.get(name) for name in before} == before  # the manifest included
    assert not [name for name in after if name.endswith(".tmp")]

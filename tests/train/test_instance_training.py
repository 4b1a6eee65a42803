"""The instance head in the training module and the data it reads, on real DSB 2018 nuclei:
targets follow the augmentation, the head's loss joins (or replaces) the prompted one,
runs without a head are unchanged, and a short head-only run learns."""

from __future__ import annotations

import csv
import dataclasses

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from samft.data.datamodule import SamDataModule
from samft.data.dataset import SamDataset
from samft.data.instance_targets import instance_targets
from samft.data.readers import build_reader
from samft.model import batched
from samft.model.transforms import SQUARE_RESIZE
from samft.train.instance_loss import instance_head_loss
from samft.train.module import SamFineTuner

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def nuclei(shared_data):
    root = shared_data / "dsb-nuclei" / "train"
    return {"format": "folder", "images": str(root / "images"), "masks": str(root / "masks")}


def _dataset(spec, **kwargs) -> SamDataset:
    return SamDataset(build_reader(spec), image_size=64, instance_targets=True, **kwargs)


class ZeroEmbeddings:
    """An embedding source that records the orientations asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def get(self, path, orientation: str) -> torch.Tensor:
        self.asked.append(orientation)
        return torch.zeros(8, 4, 4)


def test_targets_follow_the_augmentation_and_the_cache_flips(nuclei):
    import albumentations as A

    plain = _dataset(nuclei, deterministic=True)[0]
    labels = plain["instance_labels"].numpy()
    assert labels.dtype == np.int32 and labels.max() > 10
    np.testing.assert_array_equal(plain["instance_targets"].numpy(), instance_targets(labels))

    flipped = _dataset(nuclei, augment=A.Compose([A.HorizontalFlip(p=1.0)]), deterministic=True)[0]
    np.testing.assert_array_equal(flipped["instance_labels"].numpy(), labels[:, ::-1])
    targets = flipped["instance_targets"].numpy()
    np.testing.assert_array_equal(targets, instance_targets(flipped["instance_labels"].numpy()))

    cached = _dataset(nuclei, deterministic=True)
    source = ZeroEmbeddings()
    cached.use_embeddings(source, (0.0, 1.0))  # always flipped upside down
    sample = cached[0]
    assert source.asked == ["v"]
    np.testing.assert_array_equal(sample["instance_labels"].numpy(), labels[::-1])


def test_collation_pads_the_maps(nuclei):
    dm = SamDataModule(
        train=nuclei, image_size=64, batch_size=3, num_workers=0, instance_targets=True
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.instance_labels.shape == (3, 64, 64)
    assert batch.instance_targets.shape == (3, 3, 64, 64)
    for index, (h, w) in enumerate(batch.input_sizes.tolist()):
        assert not batch.instance_labels[index, h:].any()
        assert not batch.instance_targets[index, :, :, w:].any()
    plain = SamDataModule(train=nuclei, image_size=64, batch_size=2, num_workers=0)
    plain.setup("fit")
    assert next(iter(plain.train_dataloader())).instance_targets is None


# the data pipeline's resize for each variant: SAM's long side, SAM 2's square
RESIZE = {"tiny": "bilinear", "sam2_tiny": SQUARE_RESIZE}


def _module(variant: str = "tiny", **kwargs) -> SamFineTuner:
    torch.manual_seed(0)
    return SamFineTuner(
        model={"variant": variant, "image_size": 64},
        optim={"lr": 3e-3, "warmup_steps": 0, "schedule": "constant"},
        interactive={"val_clicks": [1]},
        **kwargs,
    )


def _batch(nuclei, batch_size=2, variant="tiny"):
    dm = SamDataModule(
        train=nuclei,
        image_size=64,
        resize_interpolation=RESIZE[variant],
        batch_size=batch_size,
        num_workers=0,
        max_objects_per_image=2,
        instance_targets=True,
    )
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_the_heads_loss_joins_or_replaces_the_prompted_one(nuclei, monkeypatch):
    batch = _batch(nuclei)
    head_only = _module(instance_head={"enabled": True}, loss={"prompted_weight": 0.0})
    assert head_only.instance_head.upsample_factor == 16  # tiny: 64 px -> 4 x 4 tokens
    logged: dict[str, torch.Tensor] = {}
    head_only.log = lambda name, value, **kwargs: logged.__setitem__(name, value)

    def no_decoding(*args, **kwargs):
        raise AssertionError("prompts were decoded with loss.prompted_weight=0")

    with monkeypatch.context() as patch:
        patch.setattr(batched, "decode", no_decoding)
        with torch.no_grad():
            total = head_only.training_step(batch, 0)
    with torch.no_grad():
        embeddings = head_only.encode_images(batch.images)
        images = batched.preprocess_images(head_only.model, batch.images)
        expected = instance_head_loss(
            head_only.instance_head(embeddings, images),
            batch.instance_targets,
            batched.inside_image(batch.input_sizes, 64),
            2.0,
        )
    torch.testing.assert_close(total, expected.total)
    assert set(logged) == {"train/loss", "train/loss_instance"}

    both = _module(instance_head={"enabled": True}, loss={"instance_weight": 0.5})
    without = _module()
    both.log = without.log = lambda *args, **kwargs: None
    without.model.load_state_dict(both.model.state_dict())
    with torch.no_grad():
        prompted = without.training_step(batch, 0)
        torch.manual_seed(1)
        joint = both.training_step(batch, 0)
        head = both.instance_loss(both.encode_images(batch.images), batch)
    assert joint.item() == pytest.approx(prompted.item() + 0.5 * head.total.item(), rel=1e-5)


def test_without_a_head_nothing_changes():
    module = _module()
    assert module.instance_head is None
    assert "instance_head" not in module.hparams
    assert not any(k.startswith("instance_head.") for k in module.state_dict())
    with pytest.raises(ValueError, match="trains nothing without an instance head"):
        _module(loss={"prompted_weight": 0.0})
    with pytest.raises(ValueError, match=r"\['widht'\] in config group 'instance_head'"):
        _module(instance_head={"enabled": True, "widht": 8})


@pytest.mark.parametrize("variant", ["tiny", "sam2_tiny"])
def test_a_head_alone_on_a_frozen_encoder_learns_and_validates(nuclei, tmp_path, variant):
    """SAM 2's head also reads its two finer levels, through `conv_s1` / `conv_s0`, which
    a frozen encoder keeps frozen."""
    dm = SamDataModule(
        train=nuclei,
        val=nuclei,
        image_size=64,
        resize_interpolation=RESIZE[variant],
        batch_size=4,
        num_workers=0,
        max_objects_per_image=2,
        instance_targets=True,
    )
    module = _module(
        variant,
        instance_head={"enabled": True, "width": 32},
        loss={"prompted_weight": 0.0},
        finetune={"image_encoder": "frozen", "prompt_encoder": False, "mask_decoder": False},
    )
    assert module.instance_head.skip_channels == module.model.instance_skip_channels
    assert module.instance_head.skip_channels == {"tiny": (), "sam2_tiny": (16, 8)}[variant]
    decoder_before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=16,
        logger=CSVLogger(tmp_path, name="", version=""),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=1,
        check_val_every_n_epoch=100,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    with open(tmp_path / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    for key, value in module.model.state_dict().items():  # the SAM is untouched
        torch.testing.assert_close(value, decoder_before[key])
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert {"val/instance_loss", "val/instance_msa", "val/instance_sa50"} <= set(metrics)


def test_a_sam2_head_reads_its_three_levels_cached_or_not(nuclei):
    """The loss of a SAM 2 head from the encoder equals, up to fp16, its loss from the
    cached levels, and both are the head's loss on `image_embed` with the S/8 and S/4 levels
    as skips (SAM 2's square frame: every pixel valid)."""
    batch = _batch(nuclei, variant="sam2_tiny")
    assert batch.input_sizes.tolist() == [[64, 64], [64, 64]]
    module = _module(
        "sam2_tiny",
        instance_head={"enabled": True, "width": 16},
        loss={"prompted_weight": 0.0},
        finetune={"image_encoder": "frozen"},
    )
    module.log = lambda *args, **kwargs: None
    sam, head = module.model, module.instance_head
    assert head.upsample_factor == 16  # 64 px -> 4 x 4 tokens
    with torch.no_grad():
        features = module.encode_images(batch.images)
        cached = tuple(level.half() for level in sam.to_cached(features))
        from_encoder = module.training_step(batch, 0)
        from_cache = module.training_step(dataclasses.replace(batch, embeddings=cached), 0)
        images = batched.preprocess_images(sam, batch.images)
        s0, s1 = features.high_res  # 8 x 16 x 16 and 16 x 8 x 8
        by_hand = instance_head_loss(
            head(features.image_embed, images, (s1, s0)),
            batch.instance_targets,
            torch.ones(2, 64, 64, dtype=torch.bool),
            2.0,
        )
        without_skips = instance_head_loss(
            head(features.image_embed, images, (torch.zeros_like(s1), torch.zeros_like(s0))),
            batch.instance_targets,
            torch.ones(2, 64, 64, dtype=torch.bool),
            2.0,
        )
    torch.testing.assert_close(from_encoder, by_hand.total)
    torch.testing.assert_close(from_cache, from_encoder, atol=1e-3, rtol=1e-3)
    assert abs(without_skips.total.item() - by_hand.total.item()) > 1e-4  # the skips count

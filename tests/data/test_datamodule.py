"""The datamodule from plain arguments and from the Hydra configs, and with Lightning."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import RandomSampler, SequentialSampler

from samft.data.datamodule import SamDataModule
from samft.data.errors import DataError
from samft.data.prompts import PromptSampler
from samft.model.prompts import PROMPT_BOX

CONF = Path(__file__).resolve().parents[2] / "conf"


def _coco(coco_mini, split):
    return {
        "format": "coco",
        "annotations": str(coco_mini / f"annotations_{split}.json"),
        "images": str(coco_mini / "images"),
    }


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(overrides=["+model.image_size=64", "+seed=0", *overrides])


def test_plain_arguments_and_loader_settings(coco_mini):
    dm = SamDataModule(
        train=_coco(coco_mini, "train"),
        val=_coco(coco_mini, "val"),
        image_size=64,
        batch_size=3,
        max_objects_per_image=4,
        train_augment=[{"name": "HorizontalFlip", "p": 0.5}],
        prompts=PromptSampler(point_prob=0, box_prob=1),
    )
    dm.setup("fit")
    assert set(dm.datasets) == {"train", "val"}
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train.sampler, RandomSampler) and isinstance(val.sampler, SequentialSampler)
    assert train.drop_last is False and train.batch_size == 3
    assert train.persistent_workers is False and train.pin_memory is False  # CPU, no workers
    assert dm.datasets["train"].augment is not None and dm.datasets["val"].augment is None
    assert dm.datasets["val"].deterministic and not dm.datasets["train"].deterministic
    batch = next(iter(train))
    assert len(batch.images) == 3 and (batch.prompt_types == PROMPT_BOX).all()
    assert max(batch.input_sizes.max(dim=1).values.tolist()) == 64
    assert batch.gt_masks.shape[1:] == (64, 64)
    with pytest.raises(DataError, match="data.test is not set"):
        dm.test_dataloader()


def test_workers_make_persistent_loaders(coco_mini):
    dm = SamDataModule(val=_coco(coco_mini, "val"), image_size=64, num_workers=2)
    assert dm.val_dataloader().persistent_workers is True
    assert dm.val_dataloader().num_workers == 2
    assert SamDataModule(train=_coco(coco_mini, "train")).val_dataloader() == []


def test_coco_yaml_with_the_lead_instantiate_call(coco_mini):
    cfg = _compose(
        [
            "+data=coco",
            "+prompts=points",
            f"data.train.annotations={coco_mini}/annotations_train.json",
            f"data.train.images={coco_mini}/images",
            f"data.val.annotations={coco_mini}/annotations_val.json",
            f"data.val.images={coco_mini}/images",
            "data.num_workers=0",
        ]
    )
    dm = instantiate(cfg.data, prompts=instantiate(cfg.prompts), _convert_="all")
    assert isinstance(dm, SamDataModule)
    assert dm.image_size == 64 and dm.prompts.num_points == (1, 3)
    assert dm.prompts.negative_region == "margin" and dm.prompts.box_prob == 0
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 25 and len(dm.datasets["val"]) == 27
    batch = next(iter(dm.val_dataloader()))
    assert batch.prompts.labels.shape[1] >= 1 and (batch.prompts.labels <= 1).all()


@pytest.mark.parametrize("prompts", ["paper", "box", "points"])
def test_prompt_yamls(prompts):
    cfg = _compose([f"+prompts={prompts}"])
    sampler = instantiate(cfg.prompts)
    assert isinstance(sampler, PromptSampler)
    expected = {"paper": (0.5, 0.5), "box": (0.0, 1.0), "points": (1.0, 0.0)}[prompts]
    assert (sampler.point_prob, sampler.box_prob) == expected
    assert sampler.box_noise_std == 0.1 and sampler.box_max_noise == 20


def test_folder_and_sa1b_yamls(ct_organs, semantic_dir, sa1b_dir):
    cfg = _compose(
        [
            "+data=folder",
            "+prompts=box",
            f"data.train.images={ct_organs}/images",
            f"data.train.masks={semantic_dir}",
            "data.train.mask_type=semantic",
            f"data.val.images={ct_organs}/images",
            f"data.val.masks={semantic_dir}",
            "data.num_workers=0",
        ]
    )
    dm = instantiate(cfg.data, prompts=instantiate(cfg.prompts), _convert_="all")
    dm.setup("fit")
    assert dm.datasets["val"].reader.mask_type == "semantic"  # val follows train's layout
    assert len(dm.datasets["train"]) == 4
    cfg = _compose(
        [
            "+data=sa1b",
            "+prompts=paper",
            f"data.train.root={sa1b_dir}",
            f"data.val.root={sa1b_dir}",
            "data.num_workers=0",
        ]
    )
    dm = instantiate(cfg.data, prompts=instantiate(cfg.prompts), _convert_="all")
    dm.setup("validate")
    assert set(dm.datasets) == {"val"} and len(dm.datasets["val"]) == 4


def test_mandatory_paths_are_reported():
    cfg = _compose(["+data=coco", "+prompts=paper"])
    with pytest.raises(Exception, match="train.annotations"):
        instantiate(cfg.data, prompts=instantiate(cfg.prompts), _convert_="all")


class _Consumer(L.LightningModule):
    """Reads the batch contract the way the training module does, nothing more."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch.object_image_index.max().item() < len(batch.images))
        return self.weight * batch.gt_masks.float().mean()

    def validation_step(self, batch, batch_idx):
        self.seen.append(batch.gt_masks.shape[0] == batch.prompts.labels.shape[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_runs_the_loaders(ct_organs, tmp_path):
    spec = {
        "format": "folder",
        "images": str(ct_organs / "images"),
        "masks": str(ct_organs / "masks"),
        "mask_type": "per_object",
    }
    dm = SamDataModule(train=spec, val=spec, image_size=64, batch_size=2)
    module = _Consumer()
    trainer = L.Trainer(
        accelerator="cpu",
        fast_dev_run=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    assert len(module.seen) == 4 and all(module.seen)

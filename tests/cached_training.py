"""A short Lightning fit of a frozen-encoder `SamFineTuner` on real images, each encoded once
and served from memory (what `samft cache` does from disk): shared by the slow tests that
show a fine-tune of the released LiteMedSAM helps."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from samft.data.collate import collate_samples
from samft.data.dataset import SamDataset
from samft.model import batched
from samft.train.module import SamFineTuner


class MemoryEmbeddings(dict):
    """(image path, orientation) -> C x h x w embedding, the `EmbeddingSource` protocol."""

    def get(self, path, orientation):  # noqa: D102 - dict.get with the protocol's meaning
        return self[(path, orientation)]


def fit_on_cached_embeddings(
    module: SamFineTuner, dataset: SamDataset, batch_size: int, steps: int, checkpoint: Path
) -> Path:
    """Encode each image of `dataset` once (no flips), train `module` `steps` steps on
    shuffled batches of `batch_size`, and save the Lightning checkpoint to `checkpoint`."""
    embeddings = MemoryEmbeddings()
    with torch.no_grad():
        for index in range(len(dataset)):
            image = dataset[index]["image"]
            embeddings[(dataset.record(index).path, "none")] = batched.encode_images(
                module.model, [image]
            )[0]
    dataset.use_embeddings(embeddings, (0.0, 0.0))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate_samples)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader)
    trainer.save_checkpoint(checkpoint)
    return checkpoint

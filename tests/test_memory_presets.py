"""The memory presets compose on top of an experiment and set the four knobs."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module


@pytest.mark.parametrize(
    ("preset", "batch", "accumulate", "prompts"), [("low", 1, 4, 8), ("medium", 2, 2, 16)]
)
def test_memory_preset_overrides_the_experiment(preset, batch, accumulate, prompts):
    with initialize_config_module("samft.conf", version_base="1.3"):
        base = compose("train", overrides=["+experiment=demo"])
        cfg = compose("train", overrides=["+experiment=demo", f"+memory={preset}"])
    assert base.model.activation_checkpointing is False
    assert base.trainer.precision == "32-true"
    assert cfg.model.activation_checkpointing is True
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.accumulate_grad_batches == accumulate
    assert cfg.data.batch_size == batch
    assert cfg.data.max_objects_per_image == prompts
    assert cfg.finetune.image_encoder == base.finetune.image_encoder == "full"

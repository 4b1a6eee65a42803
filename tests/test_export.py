"""Export of trained checkpoints in the official layout: strict loading in Meta's code,
identical outputs to the LoRA model before merging, the sidecar, and bad input."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from reference import official_kwargs
from torch import nn

from samft.data.images import read_rgb
from samft.infer.predictor import SamPredictor
from samft.io.files import OutputError, output_stem
from samft.model.lora import LoRALinear
from samft.train.module import SamFineTuner
from samft.weights import CheckpointError
from samft.weights.export import export_checkpoint
from samft.weights.lightning import (
    checkpoint_kind,
    final_validation_metrics,
    read_lightning_info,
)

FINAL_METRICS = {"val/miou": 0.625, "val/dice": 0.75}


def make_tuner(image_size: int | None = None, seed: int = 0) -> SamFineTuner:
    """A tiny SamFineTuner with LoRA whose adapters are far from zero (as after training)."""
    torch.manual_seed(seed)
    module = SamFineTuner(
        model={"variant": "tiny", "image_size": image_size},
        finetune={"image_encoder": "lora", "lora_rank": 4, "lora_alpha": 8.0},
    )
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("lora_B"):
                param.normal_(0.0, 0.05)
    return module.eval()


def save_lightning_checkpoint(
    path: Path, module: SamFineTuner | None = None, best_score: float | None = None
) -> Path:
    """Write `module` (default: `make_tuner()`) as a Lightning checkpoint via a Trainer.

    With `best_score`, a ModelCheckpoint monitoring val/miou stores that score, as a run
    that validated would.
    """
    module = module if module is not None else make_tuner()
    callbacks = []
    if best_score is not None:
        callback = ModelCheckpoint(monitor="val/miou", mode="max", dirpath=path.parent)
        callback.best_model_score = torch.tensor(best_score)
        callback.current_score = torch.tensor(best_score - 0.1)
        callbacks.append(callback)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=bool(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(module)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[SamFineTuner, Path]:
    """A LoRA tuner and its checkpoint inside a run folder with final_metrics.json."""
    run = tmp_path_factory.mktemp("run")
    module = make_tuner()
    path = save_lightning_checkpoint(run / "checkpoints" / "last.ckpt", module, best_score=0.5)
    (run / "final_metrics.json").write_text(json.dumps(FINAL_METRICS))
    return module, path


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> dict[str, Path]:
    return export_checkpoint(trained[1], tmp_path_factory.mktemp("export") / "tiny_sam.pth")


def official_tiny(official) -> nn.Module:
    """Meta's `Sam` with the tiny hyper-parameters (the registry has only vit_b/l/h)."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    kw = official_kwargs("tiny")
    return Sam(
        image_encoder=ImageEncoderViT(**kw["image_encoder"]),
        prompt_encoder=PromptEncoder(**kw["prompt_encoder"]),
        mask_decoder=MaskDecoder(
            transformer=TwoWayTransformer(**kw["transformer"]), **kw["mask_decoder"]
        ),
        **kw["sam"],
    ).eval()


def test_export_writes_both_formats_and_the_sidecar(exported):
    assert set(exported) == {"pth", "safetensors", "sidecar"}
    assert exported["pth"].name == "tiny_sam.pth"
    assert exported["safetensors"].name == "tiny_sam.safetensors"
    assert exported["sidecar"].name == "tiny_sam.json"


def test_export_loads_strict_in_official_sam_and_reproduces_the_lora_model(
    official, trained, exported, coco_mini
):
    """The merged export in Meta's own classes gives the unmerged LoRA model's outputs."""
    module, _ = trained
    assert any(isinstance(m, LoRALinear) for m in module.model.modules())  # LoRA active
    reference = official_tiny(official)
    state_dict = torch.load(exported["pth"], weights_only=True)  # a bare state dict, as Meta's
    reference.load_state_dict(state_dict, strict=True)
    assert all(".lora_" not in key for key in state_dict)

    theirs = official.SamPredictor(reference)
    ours = SamPredictor(module.model)
    images = sorted((coco_mini / "images").glob("*.jpg"))[:2]
    for image_path in images:
        image = read_rgb(image_path)
        theirs.set_image(image)
        ours.set_image(image)
        torch.testing.assert_close(ours.features, theirs.features, atol=1e-4, rtol=0)
        h, w = image.shape[:2]
        prompts = [
            {"point_coords": np.array([[w * 0.4, h * 0.5]]), "point_labels": np.array([1])},
            {"box": np.array([w * 0.2, h * 0.2, w * 0.7, h * 0.9])},
            {
                "point_coords": np.array([[w * 0.5, h * 0.5], [w * 0.1, h * 0.1]]),
                "point_labels": np.array([1, 0]),
                "box": np.array([w * 0.3, h * 0.3, w * 0.8, h * 0.8]),
            },
        ]
        for prompt in prompts:
            got = ours.predict(**prompt, return_logits=True)
            want = theirs.predict(**prompt, return_logits=True)
            for a, b in zip(got, want, strict=True):
                np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


def test_safetensors_export_holds_the_same_tensors(official, exported):
    from safetensors.torch import load_file

    pth = torch.load(exported["pth"], weights_only=True)
    tensors = load_file(str(exported["safetensors"]))
    assert tensors.keys() == pth.keys()
    for key, value in pth.items():
        assert torch.equal(tensors[key], value), key
    official_tiny(official).load_state_dict(tensors, strict=True)


def test_exported_files_are_readable_by_others_like_any_new_file(exported):
    umask = os.umask(0)
    os.umask(umask)
    for name in ("pth", "safetensors"):
        assert exported[name].stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_sidecar_records_source_config_and_metrics(trained, exported):
    _, checkpoint = trained
    sidecar = json.loads(exported["sidecar"].read_text())
    assert sidecar["format"] == "samft-export/1"
    assert sidecar["variant"] == "tiny"
    assert sidecar["image_size"] == 256
    assert sidecar["source"]["kind"] == "lightning"
    assert sidecar["source"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert sidecar["training_config"]["finetune"]["image_encoder"] == "lora"
    assert sidecar["training_config"]["finetune"]["lora_rank"] == 4
    assert sidecar["validation_metrics"] == FINAL_METRICS
    assert sidecar["validation_metrics_source"].endswith("final_metrics.json")
    for name in ("pth", "safetensors"):
        entry = sidecar["files"][name]
        assert entry["sha256"] == hashlib.sha256(exported[name].read_bytes()).hexdigest()


def test_validation_metrics_fall_back_to_the_checkpoint_callbacks(trained, tmp_path):
    """Outside its run folder a checkpoint still carries ModelCheckpoint's scores."""
    copy = tmp_path / "alone.ckpt"
    copy.write_bytes(trained[1].read_bytes())
    info = read_lightning_info(copy)
    metrics, source = final_validation_metrics(copy, info)
    assert source == "checkpoint callbacks"
    assert metrics == pytest.approx({"best/val/miou": 0.5, "current/val/miou": 0.4})


def test_checkpoint_kinds(trained, exported, tmp_path):
    assert checkpoint_kind(trained[1]) == "lightning"
    assert checkpoint_kind(exported["pth"]) == "export"
    assert checkpoint_kind(exported["safetensors"]) == "export"
    plain = tmp_path / "plain.pth"
    plain.write_bytes(exported["pth"].read_bytes())
    assert checkpoint_kind(plain) == "weights"


def test_output_stem_strips_known_extensions_only():
    assert output_stem("out/model.pth") == Path("out/model")
    assert output_stem("out/model.safetensors") == Path("out/model")
    assert output_stem("out/model") == Path("out/model")
    assert output_stem("out/run.v2") == Path("out/run.v2")


def test_single_format_and_training_state_dropped(trained, tmp_path):
    written = export_checkpoint(trained[1], tmp_path / "only", format="safetensors")
    assert set(written) == {"safetensors", "sidecar"}
    from safetensors.torch import load_file

    keys = load_file(str(written["safetensors"])).keys()
    assert all(k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder.")) for k in keys)


@pytest.mark.slow
def test_vit_b_export_loads_strict_in_the_official_registry(official, tmp_path):
    """A Lightning-style vit_b checkpoint with LoRA exports to keys Meta's vit_b accepts."""
    from samft.model.lora import apply_lora
    from samft.model.registry import build_sam

    sam = build_sam("vit_b")
    apply_lora(sam.image_encoder, rank=4, alpha=4.0)
    container = {
        "pytorch-lightning_version": L.__version__,
        "state_dict": {f"model.{k}": v for k, v in sam.state_dict().items()},
        "hyper_parameters": {"model": {"variant": "vit_b", "image_size": 1024}},
    }
    torch.save(container, tmp_path / "vit_b.ckpt")
    written = export_checkpoint(tmp_path / "vit_b.ckpt", tmp_path / "vit_b", format="pth")
    reference = official.sam_model_registry["vit_b"]()
    reference.load_state_dict(torch.load(written["pth"], weights_only=True), strict=True)


# --------------------------------------------------------------------------- bad input
def test_checkpoint_of_the_wrong_kind_is_a_clear_error(tmp_path):
    """A Lightning checkpoint of some other model: no SAM inside, say so and name the file."""

    class Other(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(3, 2)

    path = tmp_path / "other.ckpt"
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    trainer.strategy.connect(Other())
    trainer.save_checkpoint(path)
    with pytest.raises(
        CheckpointError, match=r"other\.ckpt.*Expected Meta.s SAM .pth, a samft Lightning"
    ):
        export_checkpoint(path, tmp_path / "out")
    assert not (tmp_path / "out.pth").exists()


def test_not_a_checkpoint_at_all_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights")
    with pytest.raises(CheckpointError, match=r"notes\.pth"):
        export_checkpoint(path, tmp_path / "out")


def test_variant_mismatch_is_a_clear_error(trained, tmp_path):
    with pytest.raises(CheckpointError, match=r"holds a 'tiny' SAM, not variant='vit_b'"):
        export_checkpoint(trained[1], tmp_path / "out", variant="vit_b")


def test_unwritable_output_folder_is_a_clear_error(trained, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OutputError, match=r"output=.*a_file/sub/model.*cannot write to folder"):
        export_checkpoint(trained[1], blocker / "sub" / "model")


def test_unknown_format_is_a_clear_error(trained, tmp_path):
    with pytest.raises(ValueError, match=r"format='tflite'; expected one of"):
        export_checkpoint(trained[1], tmp_path / "out", format="tflite")


def test_sidecar_names_the_code_that_loads_each_export():
    from samft.weights.export import loader_for

    assert loader_for("vit_b", 1024).startswith('segment_anything.sam_model_registry["vit_b"]')
    assert loader_for("vit_t", 1024).startswith('mobile_sam.sam_model_registry["vit_t"]')
    assert "MedSAM_Lite" in loader_for("lite_medsam", 256)
    assert loader_for("vit_b", 512).startswith("samft.weights.load_sam")
    assert loader_for("tiny", 256).startswith("samft.weights.load_sam")

"""Exports of fine-tuned TinyViT SAMs load in the families' own code.

A LiteMedSAM fine-tuned with LoRA (the released weights, adapters and decoder moved as
training would) is exported in the official layout; the `.pth` loads strictly into
LiteMedSAM's `MedSAMLite` and gives the tuned model's outputs. The same for `vit_t` into
MobileSAM's `sam_model_registry["vit_t"]` (random weights, perturbed).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from reference_tinyvit import (
    build_reference_lite_medsam,
    import_lite_medsam,
    import_mobile_sam,
    lite_medsam_decode,
    lite_medsam_preprocess,
)

from samft.train.module import SamFineTuner
from samft.weights.export import export_checkpoint

ATOL = 1e-4


def _tuned(model: dict, seed: int) -> SamFineTuner:
    """A LoRA tuner whose adapters and decoder are moved off their start, as after training."""
    torch.manual_seed(seed)
    module = SamFineTuner(
        model=model, finetune={"image_encoder": "lora", "lora_rank": 4, "lora_alpha": 8.0}
    )
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("lora_B"):
                param.normal_(0.0, 0.02)
            elif name.startswith("model.mask_decoder.") and param.ndim > 1:
                param.add_(torch.randn_like(param) * 0.01)
    return module.eval()


def _export(module: SamFineTuner, folder: Path) -> dict:
    """Save `module` as a Lightning checkpoint, export it, read back the official .pth."""
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False
    )
    trainer.strategy.connect(module)
    ckpt = folder / "run" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    trainer.save_checkpoint(ckpt)
    written = export_checkpoint(ckpt, folder / "export" / "tuned", format="official")
    return torch.load(written["pth"], map_location="cpu", weights_only=True)


def test_lite_medsam_export_loads_in_lite_medsam(tmp_path):
    module = _tuned({"variant": "lite_medsam", "checkpoint": "litemedsam"}, seed=0)
    state_dict = _export(module, tmp_path)
    assert not any("lora" in key for key in state_dict)
    ref = build_reference_lite_medsam(import_lite_medsam(), state_dict)  # strict

    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 192, 256), generator=g).float()  # input frame
    record = {
        "image": image,
        "original_size": (300, 400),
        "point_coords": torch.tensor([[[60.0, 50.0]], [[150.0, 120.0]]]),
        "point_labels": torch.tensor([[1], [1]]),
        "boxes": torch.tensor([[20.0, 30.0, 120.0, 100.0], [100.0, 80.0, 200.0, 160.0]]),
    }
    with torch.no_grad():
        got = module.model([record], multimask_output=True)[0]  # LoRA not merged
        embedding = ref.image_encoder(lite_medsam_preprocess(image.permute(1, 2, 0).numpy()))
    ref_record = dict(record, input_size=(192, 256))
    low_res, iou, logits = lite_medsam_decode(ref, embedding, ref_record, True)
    torch.testing.assert_close(got["low_res_logits"], low_res, atol=ATOL, rtol=0)
    torch.testing.assert_close(got["iou_predictions"], iou, atol=ATOL, rtol=0)
    ours = module.model.postprocess_masks(got["low_res_logits"], (192, 256), (300, 400))
    torch.testing.assert_close(ours, logits, atol=ATOL, rtol=0)


def test_vit_t_export_loads_in_mobile_sam(tmp_path):
    module = _tuned({"variant": "vit_t"}, seed=1)
    with torch.no_grad():  # random weights: move every float tensor, BN statistics included
        for tensor in module.model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.02)
    state_dict = _export(module, tmp_path)
    mobile_sam = import_mobile_sam()
    ref = mobile_sam.sam_model_registry["vit_t"]()
    ref.load_state_dict(state_dict, strict=True)
    ref.eval()  # after loading: MobileSAM caches its attention biases on eval()

    g = torch.Generator().manual_seed(2)
    record = {
        "image": torch.randint(0, 256, (3, 768, 1024), generator=g).float(),
        "original_size": (600, 800),
        "point_coords": torch.tensor([[[300.0, 200.0], [500.0, 400.0]]]),
        "point_labels": torch.tensor([[1, 0]]),
        "boxes": torch.tensor([[100.0, 100.0, 600.0, 500.0]]),
    }
    with torch.no_grad():
        got = module.model([record], multimask_output=False)[0]
        want = ref([record], multimask_output=False)[0]
    torch.testing.assert_close(got["low_res_logits"], want["low_res_logits"], atol=ATOL, rtol=0)
    torch.testing.assert_close(got["iou_predictions"], want["iou_predictions"], atol=ATOL, rtol=0)
    assert (got["masks"] != want["masks"]).float().mean() < 1e-3

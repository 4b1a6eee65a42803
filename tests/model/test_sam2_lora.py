"""LoRA on SAM 2's Hiera: adapters on every block's attention `qkv`, Meta's keys kept
(`image_encoder.trunk.blocks.<i>.attn.qkv.weight`), the encoder unchanged at
initialisation, and merged exactly on export: Meta's own loader reads the export strictly
(video parts carried) and its encoder computes what the unmerged adapters computed."""

from __future__ import annotations

import pytest
import torch
from reference_sam2 import build_tiny_meta, import_sam2, perturb_

from samft.model.lora import LoRALinear, apply_lora, merge_lora
from samft.model.registry import build_sam
from samft.model.sam2.carried import is_video_part
from samft.weights import load_sam, save_sam

pytestmark = pytest.mark.usefixtures("one_thread")


def _levels(sam, x: torch.Tensor) -> list[torch.Tensor]:
    features = sam.encode(x)
    return [features.image_embed, *features.high_res]


def _move_adapters(module: torch.nn.Module) -> None:
    """What training does to the adapters: B leaves zero."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, LoRALinear):
                layer.lora_B.add_(torch.randn(layer.lora_B.shape, generator=gen) * 0.05)


def test_lora_on_hiera_is_the_identity_at_init_and_merges_to_the_same_outputs():
    torch.manual_seed(0)
    sam = perturb_(build_sam("sam2_tiny"), seed=3)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        plain = _levels(sam, x)
        replaced = apply_lora(sam.image_encoder, rank=4, alpha=8.0, target_modules=["qkv"])
        assert replaced == [f"trunk.blocks.{i}.attn.qkv" for i in range(5)]
        for got, want in zip(_levels(sam, x), plain, strict=True):
            torch.testing.assert_close(got, want, atol=0, rtol=0)  # B = 0: exactly the same

        _move_adapters(sam)
        unmerged = _levels(sam, x)
        assert (unmerged[0] - plain[0]).abs().max() > 1e-3  # the adapters do something
        keys = sam.state_dict().keys()
        assert "image_encoder.trunk.blocks.0.attn.qkv.weight" in keys
        assert "image_encoder.trunk.blocks.0.attn.qkv.lora_A" in keys
        merge_lora(sam.image_encoder)
        assert sam.state_dict().keys() == build_sam("sam2_tiny").state_dict().keys()
        for got, want in zip(_levels(sam, x), unmerged, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_a_lora_model_from_a_meta_file_exports_what_meta_loads_strictly(tmp_path):
    meta = import_sam2()
    torch.manual_seed(0)
    ref = perturb_(build_tiny_meta(), seed=5)
    meta_file = tmp_path / "sam2_tiny.pt"
    torch.save({"model": ref.state_dict()}, meta_file)  # as Meta ships SAM 2

    sam = load_sam(meta_file)
    apply_lora(sam.image_encoder, rank=4, alpha=8.0, target_modules=["qkv"])
    _move_adapters(sam)
    exported = save_sam(sam, tmp_path / "tuned.pt")  # the LoRA folded into qkv.weight

    theirs = build_tiny_meta()
    meta.build_sam._load_checkpoint(theirs, str(exported))  # strict: every key, no more
    for key, tensor in ref.state_dict().items():
        if is_video_part(key):
            assert torch.equal(theirs.state_dict()[key], tensor), key
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        ours = sam.image_encoder(x)  # raw FPN levels, unmerged adapters
        want = theirs.image_encoder(x)
    torch.testing.assert_close(want["vision_features"], ours[-1], atol=1e-5, rtol=0)
    for got, level in zip(want["backbone_fpn"], ours, strict=True):
        torch.testing.assert_close(got, level, atol=1e-5, rtol=0)

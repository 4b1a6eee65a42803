from __future__ import annotations

import dataclasses

import pytest
import torch
from reference import build_official, official_kwargs

from samft.model.registry import VARIANTS, build_sam


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_official_variants_have_official_keys_and_shapes(official, variant):
    """Same keys and shapes as Meta's own builder (built on `meta`: nothing allocated)."""
    with torch.device("meta"):
        ours = build_sam(variant)
        ref = official.sam_model_registry[variant]()
    assert _shapes(ours) == _shapes(ref)


def test_tiny_builds_with_official_classes_too(official):
    with torch.device("meta"):
        ours = build_sam("tiny")
        ref = build_official(official.modeling, "tiny")
    assert _shapes(ours) == _shapes(ref)


def test_variant_hyper_parameters():
    assert VARIANTS["vit_b"].encoder_global_attn_indexes == (2, 5, 8, 11)
    assert (VARIANTS["vit_h"].encoder_embed_dim, VARIANTS["vit_h"].encoder_depth) == (1280, 32)
    tiny = VARIANTS["tiny"]
    assert (tiny.image_size, tiny.prompt_embed_dim, tiny.window_size) == (256, 128, 8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny.image_size = 512  # type: ignore[misc]


def test_tiny_is_cheap():
    sam = build_sam("tiny")
    params = sum(p.numel() for p in sam.parameters())
    assert params < 2_000_000, params
    with torch.no_grad():
        emb = sam.image_encoder(torch.zeros(2, 3, 256, 256))
    assert emb.shape == (2, 128, 16, 16)


def test_image_size_override_and_defaults():
    with torch.device("meta"):
        sam = build_sam("vit_b", image_size=512)
        default = build_sam("vit_b")
    assert sam.image_size == 512 and default.image_size == 1024
    assert sam.image_encoder.pos_embed.shape == (1, 32, 32, 768)
    assert sam.image_encoder.blocks[2].attn.rel_pos_h.shape == (63, 64)  # global: 2 * 32 - 1
    assert sam.image_encoder.blocks[0].attn.rel_pos_h.shape == (27, 64)  # window 14
    assert sam.prompt_encoder.image_embedding_size == (32, 32)
    assert sam.prompt_encoder.mask_input_size == (128, 128)
    assert official_kwargs("vit_b", 512)["prompt_encoder"]["input_image_size"] == (512, 512)


def test_build_sam_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown SAM variant 'vit_x'.*'tiny'.*'vit_b'"):
        build_sam("vit_x")
    with pytest.raises(ValueError, match="multiple of the patch size 16, got 500"):
        build_sam("tiny", image_size=500)


def test_activation_checkpointing_flag_reaches_encoder():
    assert build_sam("tiny", activation_checkpointing=True).image_encoder.activation_checkpointing
    assert not build_sam("tiny").image_encoder.activation_checkpointing
    assert not build_sam("tiny").training  # built in eval mode, like the official builder

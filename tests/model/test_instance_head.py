"""The instance head's shapes, its image path and its argument checks."""

from __future__ import annotations

import pytest
import torch

from samft.model.instance_head import InstanceHead


def test_litemedsam_sized_embedding_to_the_input_square():
    head = InstanceHead(embed_dim=256, upsample_factor=4, width=32, image_channels=8)
    out = head(torch.randn(2, 256, 16, 16), torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3, 64, 64)
    out.sum().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_a_vit_sized_upsampling_and_no_image_path():
    head = InstanceHead(embed_dim=8, upsample_factor=16, width=16, min_width=4, image_channels=0)
    assert len(head.stages) == 4
    assert head(torch.randn(1, 8, 4, 4)).shape == (1, 3, 64, 64)


def test_argument_checks():
    with pytest.raises(ValueError, match="power of two"):
        InstanceHead(upsample_factor=6)
    head = InstanceHead(embed_dim=8, upsample_factor=2, width=8, image_channels=4)
    with pytest.raises(ValueError, match="pass `images`"):
        head(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="expected \\(8, 8\\)"):
        head(torch.randn(1, 8, 4, 4), torch.randn(1, 3, 16, 16))


def _sam2_sized_head(**kwargs) -> InstanceHead:
    """A head for `sam2_tiny` at 64 px: a 4 x 4 embedding, skips of 16 and 8 channels at
    8 x 8 and 16 x 16."""
    return InstanceHead(
        embed_dim=64, upsample_factor=16, width=16, min_width=4, skip_channels=(16, 8), **kwargs
    )


def _skips(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 16, 8, 8), torch.randn(batch, 8, 16, 16)


def test_skips_join_the_stages_at_their_resolution():
    torch.manual_seed(0)
    head = _sam2_sized_head(image_channels=4)
    embeddings, images, skips = torch.randn(2, 64, 4, 4), torch.randn(2, 3, 64, 64), _skips()
    out = head(embeddings, images, skips)
    assert out.shape == (2, 3, 64, 64)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    # widths 16, 8, 4, 4, 4: each skip is projected to its stage's width and concatenated
    assert head.skips[0][0].weight.shape == (8, 16, 1, 1)
    assert head.skips[1][0].weight.shape == (4, 8, 1, 1)
    assert head.stages[0][0].weight.shape == (8, 16 + 8, 3, 3)
    assert head.stages[1][0].weight.shape == (4, 8 + 4, 3, 3)
    assert head.stages[2][0].weight.shape == (4, 4, 3, 3)  # no skip at 4x this deep
    with torch.no_grad():  # the output reads each skip, only there
        for index in range(2):
            changed = list(skips)
            changed[index] = torch.randn_like(skips[index])
            moved = head(embeddings, images, changed) - head(embeddings, images, skips)
            assert moved.abs().amax() > 1e-3
        torch.testing.assert_close(head(embeddings, images, skips), out.detach())


def test_without_skips_the_head_is_what_it_was():
    """`skip_channels=()` (SAM 1 family) adds no state-dict key and changes no shape: a
    head with skips differs only by its `skips.*` projections and its first stages' inputs,
    so exports of heads without skips keep loading."""
    arguments = {"embed_dim": 8, "upsample_factor": 4, "width": 16, "min_width": 4}
    plain = InstanceHead(**arguments, image_channels=4)
    assert plain.skip_channels == () and not any(k.startswith("skips.") for k in plain.state_dict())
    assert dict(plain.named_parameters()).keys() == plain.state_dict().keys()
    skipped = InstanceHead(**arguments, image_channels=4, skip_channels=(6,))
    plain_shapes = {k: v.shape for k, v in plain.state_dict().items()}
    skipped_shapes = {k: v.shape for k, v in skipped.state_dict().items()}
    assert set(skipped_shapes) - set(plain_shapes) == {
        "skips.0.0.weight", "skips.0.1.weight", "skips.0.1.bias"
    }  # fmt: skip
    differ = {k for k in plain_shapes if plain_shapes[k] != skipped_shapes[k]}
    assert differ == {"stages.0.0.weight"}
    assert skipped_shapes["stages.0.0.weight"][1] == plain_shapes["stages.0.0.weight"][1] + 8


def test_skip_checks():
    with pytest.raises(ValueError, match="at most 2 skips"):
        InstanceHead(embed_dim=8, upsample_factor=4, skip_channels=(4, 4, 4))
    head = _sam2_sized_head(image_channels=0)
    embeddings = torch.randn(1, 64, 4, 4)
    with pytest.raises(ValueError, match="0 skip feature maps given, this head takes 2"):
        head(embeddings)
    s1, s0 = _skips(1)
    with pytest.raises(ValueError, match=r"skip 0 of shape \(1, 8, 16, 16\), expected B x 16 x 8"):
        head(embeddings, skips=(s0, s1))  # finest first: the wrong order
    plain = InstanceHead(embed_dim=64, upsample_factor=16, width=16, min_width=4, image_channels=0)
    with pytest.raises(ValueError, match="2 skip feature maps given, this head takes 0"):
        plain(embeddings, skips=(s1, s0))  # a SAM 1 head on SAM 2's features

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

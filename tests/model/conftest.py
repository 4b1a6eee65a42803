"""Pairs of samft and official SAM models holding the same random weights."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from reference import build_official
from torch import nn

from samft.model.registry import build_sam
from samft.model.sam import Sam

# The vit_b architecture at a small input: 16 x 16 tokens, so windows of 14 need padding.
VIT_B_TEST_SIZE = 256


def perturb_(model: nn.Module, seed: int, scale: float = 0.05) -> nn.Module:
    """Add seeded noise to every parameter and saved buffer.

    Default init leaves position embeddings and rel-pos tables at zero; the noise makes
    every path (including the biases added to attention) carry signal.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=gen) * scale)
    return model


def make_pair(official, variant: str, image_size: int | None = None, seed: int = 0):
    """(samft Sam, official Sam) in eval mode with identical random weights."""
    torch.manual_seed(seed)
    ours = perturb_(build_sam(variant, image_size=image_size), seed)
    ref = build_official(official.modeling, variant, image_size)
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours, ref


@pytest.fixture(scope="session")
def tiny_pair(official) -> tuple[Sam, nn.Module]:
    return make_pair(official, "tiny")


@pytest.fixture(scope="session")
def vit_b_pair(official) -> tuple[Sam, nn.Module]:
    return make_pair(official, "vit_b", VIT_B_TEST_SIZE)


@pytest.fixture
def pair_factory(official) -> Callable[..., tuple[Sam, nn.Module]]:
    return lambda variant, image_size=None, seed=0: make_pair(official, variant, image_size, seed)

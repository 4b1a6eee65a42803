"""The decoder attention's reordered products equal the plain attention."""

from __future__ import annotations

import pytest
import torch

from samft.model.attention import Attention
from samft.model.lora import LoRALinear


def _attention(heads: int = 8, dim: int = 32) -> Attention:
    torch.manual_seed(0)
    attention = Attention(dim, heads, downsample_rate=2).double()
    for parameter in attention.parameters():  # non-zero biases: their algebra is tested too
        torch.nn.init.normal_(parameter, std=0.3)
    return attention


@pytest.mark.parametrize("tokens", [1, 3])
def test_tokens_to_image_reordered_equals_plain(tokens):
    attention = _attention(heads=4, dim=32)  # 4 heads x 3 tokens < 16: reordered
    assert attention.reorders(tokens)
    q = torch.randn(2, tokens, 32, dtype=torch.float64)
    k, v = torch.randn(2, 2, 50, 32, dtype=torch.float64)
    torch.testing.assert_close(attention.attend_image(q, k, v), attention(q, k, v))


@pytest.mark.parametrize("projected", [False, True])
def test_image_to_tokens_reordered_equals_plain(projected):
    attention = _attention(heads=4, dim=32)
    image = torch.randn(3, 50, 32, dtype=torch.float64)
    k, v = torch.randn(2, 3, 2, 32, dtype=torch.float64)
    expected = attention(image, k, v)
    q = attention.q_proj(image) if projected else image
    torch.testing.assert_close(attention.attend_tokens(q, k, v, projected=projected), expected)


def test_many_tokens_and_adapted_projections_keep_the_plain_order():
    attention = _attention(heads=4, dim=32)
    assert not attention.reorders(4)  # 4 heads x 4 tokens = the 16-wide projection
    q = torch.randn(2, 4, 32, dtype=torch.float64)
    k, v = torch.randn(2, 2, 50, 32, dtype=torch.float64)
    torch.testing.assert_close(attention.attend_image(q, k, v), attention(q, k, v))

    attention.k_proj = LoRALinear.from_linear(attention.k_proj, rank=2, alpha=2.0).double()
    torch.nn.init.normal_(attention.k_proj.lora_B, std=0.3)  # the adapter changes the keys
    assert not attention.reorders(1)
    q1 = q[:, :1]
    torch.testing.assert_close(attention.attend_image(q1, k, v), attention(q1, k, v))
    image = torch.randn(2, 50, 32, dtype=torch.float64)
    torch.testing.assert_close(attention.attend_tokens(image, q1, q1), attention(image, q1, q1))


def test_reordered_gradients_match():
    attention = _attention(heads=4, dim=32)
    q = torch.randn(2, 2, 32, dtype=torch.float64)
    k, v = torch.randn(2, 2, 40, 32, dtype=torch.float64)
    grads = []
    for call in (attention.attend_image, attention.forward):
        attention.zero_grad()
        call(q, k, v).square().sum().backward()
        # the key bias cancels in the softmax: no gradient reordered, a zero one plain
        grads.append(
            [
                torch.zeros_like(p) if p.grad is None else p.grad.clone()
                for p in attention.parameters()
            ]
        )
    for reordered, plain in zip(*grads, strict=True):
        torch.testing.assert_close(reordered, plain)
    assert attention.k_proj.bias.grad.abs().max() < 1e-12

"""Small layers shared by the encoder and the decoder.

Attribute names (`lin1`, `lin2`, `weight`, `bias`) follow the official SAM so that
state-dict keys line up one to one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MLPBlock(nn.Module):
    """Two linear layers with an activation between them: `... x C -> ... x C`."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(self.act(self.lin1(x)))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a `B x C x H x W` map (ConvNeXt style).

    Normalises every pixel's channel vector on its own, so conv stacks can use it
    without permuting to channels-last.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=1, keepdim=True)
        centred = x - mean
        var = centred.pow(2).mean(dim=1, keepdim=True)
        normed = centred / torch.sqrt(var + self.eps)
        return normed * self.weight[:, None, None] + self.bias[:, None, None]

"""The layers TinyViT is made of: conv+BN units, MBConv, patch merging, attention blocks.

Module and attribute names (`c`/`bn`, `conv1..3`, `attn.qkv`, `attention_biases`,
`mlp.fc1`, `local_conv`) follow MobileSAM's TinyViT so that state-dict keys are the same.
Feature maps travel as `B x C x H x W` between stages and as channels-last
`B x H x W x C` inside the attention blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samft.model.image_encoder import window_partition, window_unpartition


class Conv2dBN(nn.Sequential):
    """A bias-free convolution `c` followed by BatchNorm `bn`.

    `bn_weight_init=0` makes the unit output zeros at initialisation, so a residual
    branch ending in it starts as the identity.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(
            in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability p
    (rescaling the kept ones by 1/(1-p)); the identity in eval mode or when p is 0."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class PatchEmbed(nn.Module):
    """The stem, `B x 3 x S x S -> B x C x S/s x S/s`: two conv+BN units with GELU between.

    MobileSAM uses 3x3 convolutions of stride 2 (s = 4); LiteMedSAM 1x1 convolutions of
    stride 1 (s = 1), keeping the full 256 x 256 resolution for the first stage.
    """

    def __init__(
        self, in_chans: int, embed_dim: int, kernel_size: int, stride: int, padding: int
    ) -> None:
        super().__init__()
        conv = {"kernel_size": kernel_size, "stride": stride, "padding": padding}
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2, **conv),
            nn.GELU(),
            Conv2dBN(embed_dim // 2, embed_dim, **conv),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block (MobileNetV2): 1x1 expand, 3x3 depthwise, 1x1 project.

    `B x C x H x W -> B x C x H x W`; the activation comes after the residual sum.
    """

    def __init__(self, dim: int, expand_ratio: float, drop_path: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, dim, bn_weight_init=0.0)
        self.act3 = nn.GELU()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        branch = self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.act3(x + self.drop_path(branch))


class PatchMerging(nn.Module):
    """Change width (and resolution): `B x C x H x W -> B x C' x H/s x W/s`.

    1x1 conv, GELU, 3x3 depthwise conv with stride s, GELU, 1x1 conv.
    """

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.act = nn.GELU()
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride=stride, padding=1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))


def attention_bias_index(window_size: int, device: torch.device | None = None) -> Tensor:
    """`N x N` (N = ws^2) index into a window's `heads x ws^2` table of learned biases.

    The bias between two tokens depends only on their absolute row and column distance
    (dy, dx), stored at column `dy * ws + dx` (the order in which a row-major scan from
    the first token meets the offsets, which is how the table was laid out in training).
    """
    idx = torch.arange(window_size, device=device)
    rows = idx.repeat_interleave(window_size)  # token n sits at (rows[n], cols[n])
    cols = idx.repeat(window_size)
    dy = (rows[:, None] - rows[None, :]).abs()
    dx = (cols[:, None] - cols[None, :]).abs()
    return dy * window_size + dx


class Attention(nn.Module):
    """Multi-head self-attention inside a window with a learned per-offset bias (LeViT).

    `B x N x C -> B x N x C`, N = ws^2. The input is layer-normalised here (`norm`).
    `qkv` holds, for each head in turn, that head's query, key and value (head_dim each).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.window_size = window_size
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        # B x N x heads x 3d -> 3 tensors of B x heads x N x d
        qkv = self.qkv(self.norm(x)).reshape(B, N, self.num_heads, -1).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        index = attention_bias_index(self.window_size, x.device)
        bias = self.attention_biases[:, index].to(q.dtype)  # heads x N x N
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    """Pre-norm feed-forward: LayerNorm, Linear, GELU, Linear (`... x C -> ... x C`)."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(self.norm(x))))))


class TinyViTBlock(nn.Module):
    """Windowed attention, a depthwise "local" convolution, then the MLP.

    `B x H x W x C -> B x H x W x C`. The map is zero-padded bottom/right to whole
    windows; padded tokens go through the attention's LayerNorm and take part as keys
    (as in the reference), and are cropped afterwards.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop: float,
        drop_path: float,
        local_conv_size: int,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size)
        self.local_conv = Conv2dBN(
            dim, dim, local_conv_size, padding=local_conv_size // 2, groups=dim
        )
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        ws = self.window_size
        windows, padded = window_partition(x, ws)  # B*nW x ws x ws x C
        attended = self.attn(windows.reshape(-1, ws * ws, C)).reshape(-1, ws, ws, C)
        x = x + self.drop_path(window_unpartition(attended, ws, padded, (H, W)))
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(self.mlp(x))

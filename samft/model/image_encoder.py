"""SAM's image encoder: a plain ViT with windowed and global attention (ViTDet style).

Most blocks attend inside non-overlapping windows; a few (`global_attn_indexes`) attend
over the whole token grid. Every attention adds a decomposed relative position bias
(separate height and width tables), which we hand to
`torch.nn.functional.scaled_dot_product_attention` as its additive `attn_mask`, so the
fused kernels can run where the device has them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from samft.model.common import LayerNorm2d, MLPBlock


class ImageEncoderViT(nn.Module):
    """`B x 3 x S x S` normalised, padded images -> `B x out_chans x S/p x S/p` embeddings.

    `activation_checkpointing` recomputes each block in the backward pass instead of
    keeping its activations, trading about a third more compute for far less memory when
    the encoder is trained. It only acts in training mode with autograd on; the outputs
    are the same either way.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (),
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(
                f"image size {img_size} is not a multiple of the patch size {patch_size}"
            )
        self.img_size = img_size
        self.patch_size = patch_size
        self.activation_checkpointing = activation_checkpointing
        grid = img_size // patch_size

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        # Learned absolute position of every patch, 1 x grid x grid x C (channels-last).
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        global_blocks = set(global_attn_indexes)
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                norm_eps=norm_eps,
                window_size=0 if i in global_blocks else window_size,
                grid_size=grid,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"image encoder expects B x 3 x {self.img_size} x {self.img_size} input "
                f"(Sam.preprocess pads to it), got {tuple(x.shape)}"
            )
        x = self.patch_embed(x) + self.pos_embed  # B x h x w x C
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return self.neck(x.permute(0, 3, 1, 2))


class PatchEmbed(nn.Module):
    """`B x 3 x H x W` -> `B x H/p x W/p x C`: one strided convolution, channels-last out."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Block(nn.Module):
    """Pre-norm transformer block; `window_size == 0` means global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        norm_eps: float,
        window_size: int,
        grid_size: int,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        attn_size = window_size if window_size > 0 else grid_size
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_size)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        """`B x H x W x C -> B x H x W x C`."""
        h = self.norm1(x)
        if self.window_size > 0:
            height, width = h.shape[1:3]
            windows, padded = window_partition(h, self.window_size)
            h = window_unpartition(self.attn(windows), self.window_size, padded, (height, width))
        else:
            h = self.attn(h)
        x = x + h
        return x + self.mlp(self.norm2(x))


class Attention(nn.Module):
    """Multi-head self-attention over a square token map with decomposed rel-pos bias."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        # One learned vector per relative offset (-(size-1) .. size-1), per axis.
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * size - 1, head_dim))

    def forward(self, x: Tensor) -> Tensor:
        """`B x H x W x C -> B x H x W x C`."""
        B, H, W, C = x.shape
        # B x N x 3 x heads x d  ->  3 x B x heads x N x d
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (H, W))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(B, H, W, C)
        return self.proj(out)


def window_partition(x: Tensor, window_size: int) -> tuple[Tensor, tuple[int, int]]:
    """`B x H x W x C` -> `B*nW x ws x ws x C`, zero-padding bottom/right to whole windows.

    Returns the windows and the padded `(Hp, Wp)`. Padding tokens are zeros and take
    part in attention inside their window, as in the official model.
    """
    B, H, W, C = x.shape
    pad_h = -H % window_size
    pad_w = -W % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.reshape(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    windows = x.transpose(2, 3).reshape(-1, window_size, window_size, C)
    return windows, (Hp, Wp)


def window_unpartition(
    windows: Tensor, window_size: int, padded: tuple[int, int], size: tuple[int, int]
) -> Tensor:
    """Inverse of `window_partition`: `B*nW x ws x ws x C` -> `B x H x W x C`."""
    Hp, Wp = padded
    H, W = size
    nh, nw = Hp // window_size, Wp // window_size
    B = windows.shape[0] // (nh * nw)
    x = windows.reshape(B, nh, nw, window_size, window_size, -1).transpose(2, 3)
    x = x.reshape(B, Hp, Wp, -1)
    if Hp > H or Wp > W:
        x = x[:, :H, :W, :]
    return x.contiguous()


def resize_rel_pos(table: Tensor, length: int) -> Tensor:
    """Linearly resample an `L x d` relative-position table to `length x d`.

    Used when a table learned for one grid is applied to another (a checkpoint trained
    at 1024 px fine-tuned at 512 px); matches the official runtime resampling.
    """
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.T[None].float(), size=length, mode="linear")
    return resized[0].T.to(table.dtype)


def rel_pos_lookup(size: int, table: Tensor) -> Tensor:
    """`size x size x d`: the table row for each (query, key) offset along one axis."""
    table = resize_rel_pos(table, 2 * size - 1)
    idx = torch.arange(size, device=table.device)
    offsets = idx[:, None] - idx[None, :] + (size - 1)
    return table[offsets]


def decomposed_rel_pos_bias(
    q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, size: tuple[int, int]
) -> Tensor:
    """Additive attention bias `B x heads x N x N` (N = H*W) from per-axis tables (MViTv2).

    The bias between query (i, j) and key (k, l) is `q_ij . Rh[i-k] + q_ij . Rw[j-l]`,
    computed with the unscaled query. It depends on q, so gradients flow through it.
    """
    B, heads, N, d = q.shape
    H, W = size
    Rh = rel_pos_lookup(H, rel_pos_h)  # H x H x d
    Rw = rel_pos_lookup(W, rel_pos_w)  # W x W x d
    q_grid = q.reshape(B, heads, H, W, d)
    bias_h = torch.einsum("bnhwc,hkc->bnhwk", q_grid, Rh)  # B x heads x H x W x H
    bias_w = torch.einsum("bnhwc,wkc->bnhwk", q_grid, Rw)  # B x heads x H x W x W
    bias = bias_h[..., :, None] + bias_w[..., None, :]  # B x heads x H x W x H x W
    return bias.reshape(B, heads, N, N)

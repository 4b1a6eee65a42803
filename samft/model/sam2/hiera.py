"""SAM 2's image trunk: Hiera, a hierarchical ViT whose stages halve the token grid.

A stride-4 patch embedding (7 x 7 convolution) feeds four stages of pre-norm blocks. The
first block of stages 2..4 max-pools its queries 2 x 2 (and its shortcut), doubles the
width and the heads, so the stage runs on a grid half as wide. Most blocks attend inside
windows (`window_spec`, one size per stage), a few (`global_att_blocks`) over the whole
grid; there is no relative position bias. The absolute position is a background embedding
resized bicubically to the grid plus a window-sized embedding tiled over it.

For an `S x S` input the four outputs are, highest resolution first,
`B x C x S/4 x S/4`, `B x 2C x S/8 x S/8`, `B x 4C x S/16 x S/16` and `B x 8C x S/32 x S/32`
(C = `embed_dim`, with `dim_mul` = 2). Module names follow Meta's `sam2` so that the
state-dict keys (`patch_embed.proj.*`, `pos_embed`, `pos_embed_window`,
`blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.layers.<j>,proj}.*`) are the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from samft.model.image_encoder import window_partition, window_unpartition
from samft.model.tiny_vit_blocks import DropPath

NORM_EPS = 1e-6


class Hiera(nn.Module):
    """`B x 3 x S x S` normalised images -> one feature map per stage (see the module doc).

    Args:
        embed_dim: width C of the first stage.
        num_heads: attention heads of the first stage.
        stages: blocks per stage, e.g. (1, 2, 7, 2) for hiera_t.
        global_att_blocks: indexes (over all blocks) of the global-attention blocks.
        window_spec: window side per stage (tokens), for the windowed blocks.
        window_pos_embed_bkg_spatial_size: (h, w) of the learned background position
            embedding, resized to the stage-1 grid at run time.
        q_pool: how many stage transitions pool (the first `q_pool` of them).
        q_stride: pooling stride at a transition.
        dim_mul, head_mul: width and head multipliers at a transition.
        mlp_ratio: MLP hidden width over block width.
        drop_path_rate: stochastic depth of the last block in training, rising linearly
            from 0 at the first (Meta's fine-tuning recipe uses 0.1; eval ignores it).
        activation_checkpointing: recompute each block in the backward pass (training
            with autograd only; the outputs are the same).
    """

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        stages: Sequence[int] = (2, 3, 16, 3),
        global_att_blocks: Sequence[int] = (12, 16, 20),
        window_spec: Sequence[int] = (8, 4, 14, 7),
        window_pos_embed_bkg_spatial_size: Sequence[int] = (14, 14),
        q_pool: int = 3,
        q_stride: int = 2,
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError(
                f"Hiera needs one window size per stage: stages {tuple(stages)}, "
                f"window_spec {tuple(window_spec)}"
            )
        self.window_spec = tuple(window_spec)
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        if not 0 <= q_pool < len(stages):
            raise ValueError(f"q_pool must be in [0, {len(stages) - 1}], got {q_pool}")
        pooled = {end + 1 for end in self.stage_ends[:-1][:q_pool]}  # first blocks that pool
        self.activation_checkpointing = activation_checkpointing

        self.patch_embed = HieraPatchEmbed(3, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(
            torch.zeros(1, embed_dim, self.window_spec[0], self.window_spec[0])
        )

        blocks = []
        dim, stage = embed_dim, 0
        depth = sum(stages)
        for i in range(depth):
            # a stage's first block still uses the previous stage's window: its queries
            # are pooled inside that window, down to the new stage's grid
            window = 0 if i in global_att_blocks else self.window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:
                dim_out = int(dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                stage += 1
            blocks.append(
                MultiScaleBlock(
                    dim,
                    dim_out,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    q_stride=q_stride if i in pooled else None,
                    window_size=window,
                    drop_path=drop_path_rate * i / max(depth - 1, 1),
                )
            )
            dim = dim_out
        self.blocks = nn.ModuleList(blocks)
        # widths of the outputs, lowest resolution first (as FpnNeck lists them)
        self.channel_list = [self.blocks[end].dim_out for end in self.stage_ends[::-1]]

    def position_embedding(self, size: tuple[int, int]) -> Tensor:
        """`1 x h x w x C`: the background embedding resized to the `h x w` grid plus the
        window embedding tiled over it."""
        h, w = size
        window = self.pos_embed_window.shape[-1]
        if h % window or w % window:
            raise ValueError(
                f"Hiera's {h} x {w} patch grid is not a whole number of {window} x {window} "
                f"windows: the input side must be a multiple of {4 * window}"
            )
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        pos = pos + self.pos_embed_window.tile(1, 1, h // window, w // window)
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: Tensor) -> list[Tensor]:
        """`B x 3 x S x S` -> the stage outputs `B x C_i x h_i x w_i`, highest resolution
        first."""
        x = self.patch_embed(x)  # B x S/4 x S/4 x C
        x = x + self.position_embedding(x.shape[1:3])
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        ends = set(self.stage_ends)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
            if i in ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs


class HieraPatchEmbed(nn.Module):
    """`B x 3 x S x S` -> `B x S/4 x S/4 x C`: a 7 x 7 stride-4 convolution, channels-last."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class MultiScaleBlock(nn.Module):
    """Pre-norm block on a channels-last grid; `q_stride` pools it, `window_size` 0 means
    global attention.

    A pooling block changes width `dim -> dim_out`: its shortcut is the normalised input
    projected to `dim_out` and pooled like the queries.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        q_stride: int | None = None,
        window_size: int = 0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_stride)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim_out, eps=NORM_EPS)
        self.mlp = HieraMLP(dim_out, int(dim_out * mlp_ratio))
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        """`B x H x W x dim` -> `B x H' x W' x dim_out` (H' = H / q_stride when pooling)."""
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = max_pool(self.proj(x), self.q_stride)

        window = self.window_size
        if window > 0:
            x, padded = window_partition(x, window)
        x = self.attn(x)
        if window > 0:
            if self.q_stride:  # the windows shrank with their queries
                window //= self.q_stride
                padded = (padded[0] // self.q_stride, padded[1] // self.q_stride)
            x = window_unpartition(x, window, padded, tuple(shortcut.shape[1:3]))

        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention on a grid whose queries may be max-pooled by `q_stride`
    (keys and values keep the full grid)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: int | None) -> None:
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"attention width {dim_out} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        """`B x H x W x dim` -> `B x H' x W' x dim_out`."""
        B, H, W, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).unbind(2)
        if self.q_stride:
            q = max_pool(q.reshape(B, H, W, -1), self.q_stride)
            H, W = q.shape[1:3]
            q = q.reshape(B, H * W, self.num_heads, -1)
        # B x heads x tokens x d
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        return self.proj(out.transpose(1, 2).reshape(B, H, W, -1))


class HieraMLP(nn.Module):
    """`layers.0` -> GELU -> `layers.1`: `... x C -> ... x C` (the key names of `sam2`'s MLP)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, hidden_dim), nn.Linear(hidden_dim, dim)])
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.layers[1](self.act(self.layers[0](x)))


def max_pool(x: Tensor, stride: int | None) -> Tensor:
    """`B x H x W x C` -> `B x H/s x W/s x C`: max over each `s x s` cell (floor), or x as
    it is when `stride` is None."""
    if not stride:
        return x
    return F.max_pool2d(x.permute(0, 3, 1, 2), stride, stride).permute(0, 2, 3, 1)

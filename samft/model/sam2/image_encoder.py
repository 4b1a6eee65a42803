"""SAM 2's image encoder: the Hiera trunk and an FPN neck that brings every level to d_model.

The neck projects each trunk level to `d_model` channels with a 1 x 1 convolution
(`convs.<k>.conv`, k = 0 for the lowest resolution), then runs top-down: a level listed
in `fpn_top_down_levels` adds the level below it, upsampled 2x (nearest in all released
configs). The image model keeps the levels above the lowest (`scalp` = 1 drops it): for an
`S x S` input, `B x d x S/4 x S/4`, `B x d x S/8 x S/8` and `B x d x S/16 x S/16`.

Meta's neck also returns a sine positional encoding of each level; only the video
model's memory attention reads it, so it is not computed here (it has no weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from samft.model.sam2.hiera import Hiera


class FpnNeck(nn.Module):
    """Trunk levels (highest resolution first, `B x C_i x h_i x w_i`) -> the same levels
    with `d_model` channels.

    Args:
        d_model: output channels.
        backbone_channel_list: the trunk's widths, lowest resolution first
            (`Hiera.channel_list`).
        fpn_top_down_levels: indexes (0 = highest resolution) of the levels that add the
            upsampled level below them; the others are lateral only.
        fpn_interp_model: `F.interpolate` mode of the 2x upsampling.
    """

    def __init__(
        self,
        d_model: int,
        backbone_channel_list: Sequence[int],
        fpn_top_down_levels: Sequence[int] = (2, 3),
        fpn_interp_model: str = "nearest",
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList(_Lateral(dim, d_model) for dim in backbone_channel_list)
        self.fpn_top_down_levels = tuple(fpn_top_down_levels)
        self.fpn_interp_model = fpn_interp_model

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        """`len(convs)` levels, highest resolution first -> as many `B x d x h_i x w_i`."""
        if len(xs) != len(self.convs):
            raise ValueError(f"FpnNeck expects {len(self.convs)} levels, got {len(xs)}")
        n = len(xs) - 1
        out: list[Tensor] = [xs[0]] * len(xs)
        below = None  # the previous (lower-resolution) output
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if below is not None and i in self.fpn_top_down_levels:
                up = F.interpolate(
                    below.float(),
                    scale_factor=2.0,
                    mode=self.fpn_interp_model,
                    align_corners=None if self.fpn_interp_model == "nearest" else False,
                )
                lateral = lateral + up
            out[i] = below = lateral
        return out


class _Lateral(nn.Module):
    """A level's 1 x 1 projection, as `conv` (the key `convs.<k>.conv.*`)."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Sam2ImageEncoder(nn.Module):
    """`B x 3 x S x S` normalised images -> FPN levels, highest resolution first, without
    the `scalp` lowest ones (`trunk.*` and `neck.*` keys, as Meta's `image_encoder`)."""

    def __init__(self, trunk: Hiera, neck: FpnNeck, scalp: int = 1) -> None:
        super().__init__()
        if list(trunk.channel_list) != list(neck.backbone_channel_list):
            raise ValueError(
                f"trunk widths {trunk.channel_list} do not match the neck's "
                f"{neck.backbone_channel_list}"
            )
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp

    def forward(self, x: Tensor) -> list[Tensor]:
        levels = self.neck(self.trunk(x))
        return levels[: len(levels) - self.scalp]


def feature_sizes(image_size: int, num_levels: int = 3) -> list[tuple[int, int]]:
    """The (h, w) of the image model's levels for an `image_size` square input, highest
    resolution first: S/4, S/8, S/16 for the default three."""
    return [(image_size // (4 << i),) * 2 for i in range(num_levels)]

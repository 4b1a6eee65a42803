"""The instance head: a small convolutional decoder from SAM's image embedding to the
per-pixel maps of prompt-free instance segmentation.

It reads the `B x C x h' x w'` embedding of any samft image encoder (SAM ViT: 256 x 64 x 64
for 1024 px; LiteMedSAM's TinyViT: 256 x 64 x 64 for 256 px; SAM 2's Hiera: 256 x 64 x 64
for 1024 px) and upsamples it by `upsample_factor` to the input square (padded for SAM, the
resized square for SAM 2), in stages that each double the resolution (bilinear, then two
3 x 3 convolutions) and halve the width. The embedding is coarse (one vector per 4 x 4 px
for LiteMedSAM, 16 x 16 px for SAM's ViT and SAM 2), so the last stage also sees the
preprocessed image through two convolutions at full resolution, for the borders, as
micro-sam's UNETR decoder feeds the image to its last stage.

A model with finer feature levels gives them as skips (`skip_channels`; SAM 2: its
`B x 64 x S/8 x S/8` and `B x 32 x S/4 x S/4` levels, after the mask decoder's
`conv_s1` / `conv_s0`), the way a UNet decoder takes its encoder's: each is projected
(1 x 1 convolution, GroupNorm, GELU) to the width of the stage at its resolution and
concatenated to that stage's input. The model's `instance_features` gives the embedding and
the skips (`samft.model.promptable.TrainableSam`), `instance_skip_channels` their
channels. Without skips (SAM 1 family, the default) the head has no skip weights and its
state dict is as it always was.

Its three output channels are the logits of `samft.data.instance_targets.INSTANCE_MAPS`
(foreground, centre distance, boundary distance); a sigmoid gives the maps that
`samft.infer.instance_watershed.seeded_watershed` turns into instances.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NUM_MAPS = 3


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3 x 3 convolutions, each followed by GroupNorm (batches are small) and GELU."""

    def layer(channels_in: int) -> list[nn.Module]:
        return [
            nn.Conv2d(channels_in, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(math.gcd(8, out_channels), out_channels),
            nn.GELU(),
        ]

    return nn.Sequential(*layer(in_channels), *layer(out_channels))


class InstanceHead(nn.Module):
    """Embedding (+ image) -> foreground, centre-distance and boundary-distance logits.

    Args:
        embed_dim: C, the channels of the image embedding (256 for every SAM).
        upsample_factor: input size / embedding size, a power of two (4 for LiteMedSAM,
            16 for SAM's ViT at 1024 px); one stage per doubling.
        width: channels of the first stage (at the embedding's resolution); each later
            stage has half as many, at least `min_width`.
        min_width: the fewest channels of a stage.
        image_channels: channels of the full-resolution image features (0: no image path).
        skip_channels: channels of the finer feature maps the model gives beside the
            embedding, at 2x, 4x, ... its resolution (SAM 2: (64, 32)); at most one per
            stage. () (SAM 1 family): no skips.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        upsample_factor: int = 4,
        width: int = 64,
        min_width: int = 16,
        image_channels: int = 16,
        skip_channels: Sequence[int] = (),
    ) -> None:
        super().__init__()
        stages = int(round(math.log2(upsample_factor)))
        if upsample_factor < 1 or 2**stages != upsample_factor:
            raise ValueError(f"upsample_factor={upsample_factor}: expected a power of two")
        self.upsample_factor = upsample_factor
        self.skip_channels = tuple(int(c) for c in skip_channels)
        if len(self.skip_channels) > stages:
            raise ValueError(
                f"skip_channels={self.skip_channels}: at most {stages} skips (one per stage) "
                f"for upsample_factor={upsample_factor}"
            )
        widths = [max(width // 2**i, min_width) for i in range(stages + 1)]
        self.project = nn.Sequential(
            nn.Conv2d(embed_dim, widths[0], 1, bias=False),
            nn.GroupNorm(math.gcd(8, widths[0]), widths[0]),
            nn.GELU(),
        )
        skip_widths = [widths[i + 1] for i in range(len(self.skip_channels))]
        skip_widths += [0] * (stages - len(skip_widths))  # stages without a skip
        self.stages = nn.ModuleList(
            conv_block(widths[i] + skip_widths[i], widths[i + 1]) for i in range(stages)
        )  # stage i runs after the i-th doubling, on its skip too when it has one
        self.skips = nn.ModuleList(
            skip_projection(channels, skip_widths[i])
            for i, channels in enumerate(self.skip_channels)
        )  # empty without skips: no state-dict keys
        self.image_features = conv_block(3, image_channels) if image_channels else None
        fused = widths[-1] + image_channels
        self.fuse = conv_block(fused, widths[-1])
        self.out = nn.Conv2d(widths[-1], NUM_MAPS, 1)

    def forward(
        self, embeddings: Tensor, images: Tensor | None = None, skips: Sequence[Tensor] = ()
    ) -> Tensor:
        """Logits of the three maps.

        Args:
            embeddings: B x C x h' x w' image embeddings.
            images: B x 3 x S x S preprocessed (normalised, padded for SAM) images, S = h' x
                `upsample_factor`; required when the head has an image path.
            skips: one `B x skip_channels[i] x 2^(i+1) h' x 2^(i+1) w'` map per entry of
                `skip_channels`, coarsest first (the model's `instance_features`).

        Returns:
            B x 3 x S x S logits over the input square, in `INSTANCE_MAPS` order.
        """
        if len(skips) != len(self.skip_channels):
            raise ValueError(
                f"InstanceHead: {len(skips)} skip feature maps given, this head takes "
                f"{len(self.skip_channels)} (skip_channels={self.skip_channels}); run it on "
                "the model it was trained with, whose `instance_features` gives them"
            )
        x = self.project(embeddings)
        for index, stage in enumerate(self.stages):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            if index < len(skips):
                x = torch.cat([x, self._project_skip(index, skips[index], x)], dim=1)
            x = stage(x)
        if self.image_features is not None:
            if images is None:
                raise ValueError("InstanceHead: this head reads the image too; pass `images`")
            if images.shape[-2:] != x.shape[-2:]:
                raise ValueError(
                    f"InstanceHead: images of size {tuple(images.shape[-2:])}, expected "
                    f"{tuple(x.shape[-2:])} (the embedding x {self.upsample_factor})"
                )
            x = torch.cat([x, self.image_features(images.to(x.dtype))], dim=1)
        return self.out(self.fuse(x))

    def _project_skip(self, index: int, skip: Tensor, x: Tensor) -> Tensor:
        """Skip `index` (`B x skip_channels[index] x h x w`) -> `B x width x h x w`, checked
        against the stage input `x` (`B x ... x h x w`) it joins."""
        expected = (self.skip_channels[index], *x.shape[-2:])
        if tuple(skip.shape[1:]) != expected:
            raise ValueError(
                f"InstanceHead: skip {index} of shape {tuple(skip.shape)}, expected "
                f"B x {expected[0]} x {expected[1]} x {expected[2]} (skip_channels="
                f"{self.skip_channels} at 2x, 4x, ... the embedding's resolution)"
            )
        return self.skips[index](skip.to(x.dtype))


def skip_projection(in_channels: int, out_channels: int) -> nn.Sequential:
    """A skip's 1 x 1 projection to the width of its stage, with GroupNorm and GELU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.GroupNorm(math.gcd(8, out_channels), out_channels),
        nn.GELU(),
    )

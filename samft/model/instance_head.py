"""The instance head: a small convolutional decoder from SAM's image embedding to the
per-pixel maps of prompt-free instance segmentation.

It reads the `B x C x h' x w'` embedding of any samft image encoder (SAM ViT: 256 x 64 x 64
for 1024 px; LiteMedSAM's TinyViT: 256 x 64 x 64 for 256 px) and upsamples it by
`upsample_factor` to the padded input square, in stages that each double the resolution
(bilinear, then two 3 x 3 convolutions) and halve the width. The embedding is coarse (one
vector per 4 x 4 px for LiteMedSAM, 16 x 16 px for SAM's ViT), so the last stage also sees
the preprocessed image through two convolutions at full resolution, for the borders, as
micro-sam's UNETR decoder feeds the image to its last stage.

Its three output channels are the logits of `samft.data.instance_targets.INSTANCE_MAPS`
(foreground, centre distance, boundary distance); a sigmoid gives the maps that
`samft.infer.instance_watershed.seeded_watershed` turns into instances.
"""

from __future__ import annotations

import math

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
    """

    def __init__(
        self,
        embed_dim: int = 256,
        upsample_factor: int = 4,
        width: int = 64,
        min_width: int = 16,
        image_channels: int = 16,
    ) -> None:
        super().__init__()
        stages = int(round(math.log2(upsample_factor)))
        if upsample_factor < 1 or 2**stages != upsample_factor:
            raise ValueError(f"upsample_factor={upsample_factor}: expected a power of two")
        self.upsample_factor = upsample_factor
        widths = [max(width // 2**i, min_width) for i in range(stages + 1)]
        self.project = nn.Sequential(
            nn.Conv2d(embed_dim, widths[0], 1, bias=False),
            nn.GroupNorm(math.gcd(8, widths[0]), widths[0]),
            nn.GELU(),
        )
        self.stages = nn.ModuleList(
            conv_block(widths[i], widths[i + 1]) for i in range(stages)
        )  # stage i runs after the i-th doubling
        self.image_features = conv_block(3, image_channels) if image_channels else None
        fused = widths[-1] + image_channels
        self.fuse = conv_block(fused, widths[-1])
        self.out = nn.Conv2d(widths[-1], NUM_MAPS, 1)

    def forward(self, embeddings: Tensor, images: Tensor | None = None) -> Tensor:
        """Logits of the three maps.

        Args:
            embeddings: B x C x h' x w' image embeddings.
            images: B x 3 x S x S preprocessed (normalised, padded) images, S = h' x
                `upsample_factor`; required when the head has an image path.

        Returns:
            B x 3 x S x S logits over the padded input square, in `INSTANCE_MAPS` order.
        """
        x = self.project(embeddings)
        for stage in self.stages:
            x = stage(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
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

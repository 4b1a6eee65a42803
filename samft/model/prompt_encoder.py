"""Turns clicks, boxes and mask prompts into tokens and a dense map for the mask decoder.

Points and box corners become sparse tokens: a random-Fourier encoding of the position
plus a learned embedding for the kind of point. A low-res mask prompt becomes a dense
map the size of the image embedding; without one, a learned "no mask" vector is tiled.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from samft.model.common import LayerNorm2d

# Point labels understood by `PromptEncoder`.
PADDING, NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3


class PromptEncoder(nn.Module):
    """Prompt embeddings of width `embed_dim` for an image embedding of `image_embedding_size`.

    `input_image_size` is the padded square the image encoder sees (`S x S`); point and
    box coordinates are given in that frame, in pixels, as (x, y).
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # Learned offsets for negative, positive, box top-left and box bottom-right points.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        h, w = self.image_embedding_size
        self.mask_input_size = (4 * h, 4 * w)
        # 4h x 4w mask -> h x w map: two stride-2 convs then a 1x1 projection.
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> Tensor:
        """`1 x embed_dim x h x w`: the positional encoding of every image-embedding cell."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def forward(
        self,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        masks: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Embed one set of prompts per row of the batch.

        Args:
            points: coords `B x N x 2` (x, y, input frame) and labels `B x N`
                (1 positive, 0 negative, 2/3 box corners, -1 padding), or None.
            boxes: `B x 4` (x0, y0, x1, y1, input frame), or None.
            masks: low-res mask logits `B x 1 x 4h x 4w`, or None.

        Returns:
            sparse `B x T x embed_dim` (T = points (+1 padding if no box) + 2 per box) and
            dense `B x embed_dim x h x w`.
        """
        batch = self._batch_size(points, boxes, masks)
        sparse = [torch.empty(batch, 0, self.embed_dim, device=self._device())]
        if points is not None:
            coords, labels = points
            sparse.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        sparse_embeddings = torch.cat(sparse, dim=1)

        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)
        return sparse_embeddings, dense

    def _embed_points(self, coords: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """`B x N x 2`, `B x N` -> `B x N(+1) x C`. A padding token is appended when
        no box follows, as the official model was trained that way."""
        coords = coords + 0.5  # pixel centres
        if pad:
            B = coords.shape[0]
            coords = torch.cat([coords, coords.new_zeros(B, 1, 2)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(B, 1)], dim=1)
        embedding = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        labels = labels[..., None]
        embedding = torch.where(labels == PADDING, self.not_a_point_embed.weight, embedding)
        for label, table in enumerate(self.point_embeddings):
            embedding = torch.where(labels == label, embedding + table.weight, embedding)
        return embedding

    def _embed_boxes(self, boxes: Tensor) -> Tensor:
        """`B x 4` -> `B x 2 x C`: the two corners as labelled points (2 and 3)."""
        corners = boxes.reshape(-1, 2, 2) + 0.5
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_offsets = torch.cat(
            [
                self.point_embeddings[BOX_TOP_LEFT].weight,
                self.point_embeddings[BOX_BOTTOM_RIGHT].weight,
            ]
        )
        return embedding + corner_offsets

    @staticmethod
    def _batch_size(
        points: tuple[Tensor, Tensor] | None, boxes: Tensor | None, masks: Tensor | None
    ) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def _device(self) -> torch.device:
        return self.no_mask_embed.weight.device


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of 2-D positions: `[sin(2 pi G p), cos(2 pi G p)]`.

    `G` is a fixed `2 x num_pos_feats` Gaussian matrix kept as a (saved) buffer, so a
    checkpoint carries the exact frequencies its decoder was trained with.
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn(2, num_pos_feats)
        )

    def _encode(self, coords: Tensor) -> Tensor:
        """`... x 2` in [0, 1] -> `... x 2F`."""
        projected = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        projected = 2 * math.pi * projected
        return torch.cat([projected.sin(), projected.cos()], dim=-1)

    def forward(self, size: tuple[int, int]) -> Tensor:
        """`2F x h x w`: the encoding of every cell centre of an `h x w` grid."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(
            [xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1
        )  # h x w x (x, y)
        return self._encode(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: Tensor, image_size: tuple[int, int]) -> Tensor:
        """`B x N x 2` pixel (x, y) in an image of `image_size` (h, w) -> `B x N x 2F`."""
        h, w = image_size
        scale = torch.tensor([w, h], device=coords.device, dtype=coords.dtype)
        return self._encode((coords / scale).to(torch.float32))

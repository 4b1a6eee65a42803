"""SAM's mask decoder: output tokens + prompt tokens -> low-res mask logits and IoU scores.

One IoU token and `num_multimask_outputs + 1` mask tokens go through the two-way
transformer with the prompt tokens. The image tokens are upscaled 4x; each mask token,
through its own small MLP, becomes the weights of a per-pixel dot product with them.
Mask 0 is the single-mask answer; masks 1.. are the ambiguity-aware multimask answers.

Inference on a prepared image (`prepare_image`, then `predict_prepared` per call, as the
automatic mask generator does): the transformer's prompt-independent work on the image is
done once (`samft.model.transformer.PreparedImage`), only the masks asked for are computed,
and the upscaling runs pixel-wise in tiles (`upscale_masks`). A kernel-2, stride-2
transposed convolution maps each input pixel to its own 2 x 2 block of output pixels
(`C_in -> 4 C_out`, a matrix product on channels-last tokens), and LayerNorm2d, the
activations and the hypernetwork product are per pixel too; so a band of image-token rows
goes through all of them, up to its mask logits, while its temporaries are still in the
cache, instead of streaming `N x C/8 x 4h x 4w` maps through memory several times.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samft.model.common import LayerNorm2d
from samft.model.transformer import PreparedImage, TwoWayTransformer

# input pixels (image tokens) per tile of the pixel-wise upscaling: the tile's largest
# temporary, 16 x this x C/8 floats (1 MiB at C = 256), stays within a core's L2 cache
UPSCALE_TILE_PIXELS = 512


class MaskDecoder(nn.Module):
    """Predict masks from an image embedding and prompt embeddings."""

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)

        # h x w -> 4h x 4w, C -> C/8
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        image_index: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Decode N prompts.

        Args:
            image_embeddings: `1 x C x h x w` shared by all prompts, or with `image_index`
                `B x C x h x w` for B images.
            image_pe: `1 x C x h x w` (`PromptEncoder.get_dense_pe()`).
            sparse_prompt_embeddings: `N x T x C`.
            dense_prompt_embeddings: `N x C x h x w`.
            multimask_output: return the 3 multimask outputs instead of the single one.
            image_index: LongTensor `N`, the image of each prompt. Then all prompts of all
                images run in one call, gathering each prompt's embedding (memory grows
                with the prompts, not prompts x images).

        Returns:
            low-res mask logits `N x M x 4h x 4w` and IoU predictions `N x M`
            (M = 3 with multimask_output, else 1).
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            image_index,
        )
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, chosen], iou_pred[:, chosen]

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        image_index: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """All `num_mask_tokens` masks `N x (M+1) x 4h x 4w` and scores `N x (M+1)`."""
        N = sparse_prompt_embeddings.shape[0]
        tokens = self._tokens(sparse_prompt_embeddings)  # N x T' x C

        if image_index is None:  # the official call: one image for all N prompts
            image_index = torch.zeros(N, dtype=torch.long, device=tokens.device)
        _, C, h, w = image_embeddings.shape
        hs, src = attend(
            self.transformer, image_embeddings, image_pe, dense_prompt_embeddings, tokens,
            image_index,
        )  # fmt: skip
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(-1, C, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )  # N x (M+1) x C/8
        _, c, uh, uw = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(-1, c, uh * uw)).reshape(
            -1, self.num_mask_tokens, uh, uw
        )
        return masks, self.iou_prediction_head(iou_token_out)

    def prepare_image(
        self, image_embeddings: Tensor, image_pe: Tensor, dense_prompt_embeddings: Tensor
    ) -> PreparedImage:
        """One image's prompt-independent decoder work, for `predict_prepared`.

        Args:
            image_embeddings: `1 x C x h x w`.
            image_pe: `1 x C x h x w` (`PromptEncoder.get_dense_pe()`).
            dense_prompt_embeddings: `1 x C x h x w` (or `N x ...` equal rows): the dense
                embedding of every prompt that will be decoded on it (no mask prompt).
        """
        src = image_embeddings + dense_prompt_embeddings[:1]
        return self.transformer.prepare_image(src, image_pe)

    def predict_prepared(
        self, prepared: PreparedImage, sparse_prompt_embeddings: Tensor, multimask_output: bool
    ) -> tuple[Tensor, Tensor]:
        """`forward` for N prompts on a prepared image (meant for inference).

        Equal to `forward(image_embeddings, image_pe, sparse_prompt_embeddings, dense,
        multimask_output)` with the inputs `prepared` was made from, the prompts' dense
        embedding among them; only the returned masks are computed.

        Args:
            prepared: `prepare_image` of the image.
            sparse_prompt_embeddings: `N x T x C`.
            multimask_output: the 3 multimask outputs instead of the single one.

        Returns:
            low-res mask logits `N x M x 4h x 4w` and IoU predictions `N x M`.
        """
        chosen = range(1, self.num_mask_tokens) if multimask_output else range(1)
        tokens = self._tokens(sparse_prompt_embeddings)
        hs, src = self.transformer.forward_prepared(prepared, tokens)
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](hs[:, 1 + i]) for i in chosen], dim=1
        )  # N x M x C/8
        masks = self.upscale_masks(src, hyper_in, prepared.size)
        iou_pred = self.iou_prediction_head(hs[:, 0])
        return masks, iou_pred[:, chosen.start : chosen.stop]

    def _tokens(self, sparse_prompt_embeddings: Tensor) -> Tensor:
        """The IoU and mask tokens before each prompt's tokens: `N x T x C` -> `N x T' x C`."""
        N = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens[None].expand(N, -1, -1)
        return torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)

    def upscale_masks(self, src: Tensor, hyper_in: Tensor, size: tuple[int, int]) -> Tensor:
        """Mask logits from the transformer's image tokens and the hypernetwork weights.

        Equal to `hyper_in @ output_upscaling(src as N x C x h x w)`. On the CPU it is
        computed pixel-wise in tiles of `UPSCALE_TILE_PIXELS` image tokens (see the module
        doc); elsewhere (an accelerator wants few large kernels), or with other layer types
        than the official ones, the upscaling runs as it is.

        Args:
            src: `N x hw x C` image tokens.
            hyper_in: `N x M x C/8` per-mask weights.
            size: (h, w) of the token grid.

        Returns:
            `N x M x 4h x 4w` logits.
        """
        h, w = size
        N, M, _ = hyper_in.shape
        maps = self._pixelwise_upscaling() if src.device.type == "cpu" else None
        if maps is None:
            upscaled = self.output_upscaling(src.transpose(1, 2).reshape(N, -1, h, w))
            return (hyper_in @ upscaled.flatten(2)).reshape(N, M, 4 * h, 4 * w)
        rows = max(1, UPSCALE_TILE_PIXELS // w)
        out = src.new_empty(N, M, h, 4, w, 4)  # the 4 x 4 output pixels of each token
        grid = src.reshape(N, h, w, -1)
        for n in range(N):
            weights = hyper_in[n].transpose(0, 1)  # C/8 x M
            for top in range(0, h, rows):
                tile = grid[n, top : top + rows]  # r x w x C
                logits = self._upscale_tile(tile.reshape(-1, tile.shape[-1]), weights, maps)
                r = tile.shape[0]
                # token (i, j), first-conv offset (a, b), second-conv offset (c, d) ->
                # output pixel (4i + 2a + c, 4j + 2b + d)
                logits = logits.reshape(r, w, 2, 2, 2, 2, M).permute(6, 0, 2, 4, 1, 3, 5)
                out[n, :, top : top + r].copy_(logits.reshape(M, r, 4, w, 4))
        return out.reshape(N, M, 4 * h, 4 * w)

    def _upscale_tile(
        self, tokens: Tensor, weights: Tensor, maps: tuple[Tensor, Tensor, Tensor, Tensor]
    ) -> Tensor:
        """`P x C` image tokens -> `P*16 x M` mask logits, rows ordered (token, a, b, c, d)
        with (a, b) the first and (c, d) the second transposed convolution's offset."""
        weight1, bias1, weight2, bias2 = maps
        _, norm, act1, _, act2 = self.output_upscaling
        x = torch.addmm(bias1, tokens, weight1).reshape(-1, weight2.shape[0])  # P*4 x C/4
        x = act1(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
        x = act2(torch.addmm(bias2, x, weight2)).reshape(-1, weights.shape[0])  # P*16 x C/8
        return x @ weights

    def _pixelwise_upscaling(self) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """The two transposed convolutions as per-pixel linear maps, `C_in x 4 C_out`
        weights with columns ordered (a, b, channel) and `4 C_out` biases; None unless
        the upscaling has the official layer types and shapes."""
        layers = list(self.output_upscaling)
        if len(layers) != 5 or not isinstance(layers[1], LayerNorm2d):
            return None
        maps = []
        for conv in (layers[0], layers[3]):
            if not (
                type(conv) is nn.ConvTranspose2d
                and conv.kernel_size == (2, 2)
                and conv.stride == (2, 2)
                and conv.padding == (0, 0)
                and conv.output_padding == (0, 0)
                and conv.dilation == (1, 1)
                and conv.groups == 1
                and conv.bias is not None
            ):
                return None
            c_in, c_out = conv.weight.shape[:2]
            maps.append(conv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out))
            maps.append(conv.bias.repeat(4))
        return maps[0], maps[1], maps[2], maps[3]


def attend(
    transformer: nn.Module,
    image_embeddings: Tensor,
    image_pe: Tensor,
    dense_prompt_embeddings: Tensor,
    tokens: Tensor,
    image_index: Tensor,
) -> tuple[Tensor, Tensor]:
    """The two-way transformer on N prompts' tokens (`N x T x C`) and their images'
    embeddings (`B x C x h x w`, `image_index`: N longs): `hs` N x T x C, `src` N x hw x C.

    Without a per-prompt mask prompt the image tokens start equal for all prompts of an
    image, and the transformer's first block works on them once per image."""
    if dense_is_shared(dense_prompt_embeddings):
        src = image_embeddings + dense_prompt_embeddings[:1]
        return transformer(src, image_pe, tokens, image_index=image_index)
    src = image_embeddings[image_index] + dense_prompt_embeddings
    return transformer(src, image_pe.expand(tokens.shape[0], -1, -1, -1), tokens)


def dense_is_shared(dense: Tensor) -> bool:
    """True when every row of the `N x C x h x w` dense prompt embeddings is the same.

    An expanded `no_mask_embed` (no mask prompt anywhere) is recognised from its strides;
    otherwise the rows are compared, which costs far less than the decoder itself.
    """
    if dense.shape[0] == 1 or dense.stride(0) == 0:
        return True
    return bool(torch.equal(dense, dense[:1].expand_as(dense)))


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU between them (none after the last)."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.sigmoid_output = sigmoid_output

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x

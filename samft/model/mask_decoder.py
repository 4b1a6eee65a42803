"""SAM's mask decoder: output tokens + prompt tokens -> low-res mask logits and IoU scores.

One IoU token and `num_multimask_outputs + 1` mask tokens go through the two-way
transformer with the prompt tokens. The image tokens are upscaled 4x; each mask token,
through its own small MLP, becomes the weights of a per-pixel dot product with them.
Mask 0 is the single-mask answer; masks 1.. are the ambiguity-aware multimask answers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samft.model.common import LayerNorm2d
from samft.model.transformer import TwoWayTransformer


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
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens[None].expand(N, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)  # N x T' x C

        if image_index is None:  # the official call: one image for all N prompts
            image_index = torch.zeros(N, dtype=torch.long, device=tokens.device)
        _, C, h, w = image_embeddings.shape
        if dense_is_shared(dense_prompt_embeddings):
            # no per-prompt mask prompt: the image tokens start equal for all prompts of an
            # image, and the transformer's first block works on them once per image
            src = image_embeddings + dense_prompt_embeddings[:1]
            hs, src = self.transformer(src, image_pe, tokens, image_index=image_index)
        else:
            src = image_embeddings[image_index] + dense_prompt_embeddings
            hs, src = self.transformer(src, image_pe.expand(N, -1, -1, -1), tokens)
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

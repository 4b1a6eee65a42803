"""The mask decoder's two-way transformer: prompt tokens and image tokens attend to each other.

Each layer runs token self-attention, tokens-to-image cross-attention, an MLP on the
tokens, and image-to-tokens cross-attention, so both streams are updated. Positional
encodings are re-added to queries and keys at every attention, never to values.

Batched prompts: with `image_index` the image tokens are given once per image, not once per
prompt. Until the first block has updated them they are the same for every prompt of an
image, so that block projects them once per image (the keys and values of token-to-image
attention, the queries of image-to-token attention) and gathers the results per prompt;
when all prompts share one image (the predictor, automatic masks) nothing is gathered: the
prompts' tokens are stacked against the image's projections instead. The arithmetic per
prompt is the official one; only repeated work is skipped, and the cross-attentions take
their products in the cheaper order for few prompt tokens (`samft.model.attention`).

Prepared images (inference): a generator that decodes many calls of prompts on one image
(automatic masks) computes the prompt-independent part once with `prepare_image` (the
image tokens with their positional encoding and the first block's projections of them,
`ImageProjections`) and passes it to `forward_prepared` on every call: the same arithmetic
as `forward` with `image_index` on that one image, minus the repeated projections.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from samft.model.attention import Attention
from samft.model.common import MLPBlock


class ImageProjections(NamedTuple):
    """The first block's prompt-independent work on one image's tokens (`1 x hw x ...`).

    keys:          `1 x hw x C` image tokens
    keys_with_pe:  `1 x hw x C` image tokens plus their positional encoding
    to_image_k:    `1 x hw x D` keys of token-to-image attention (`k_proj(keys_with_pe)`)
    to_image_v:    `1 x hw x D` values of token-to-image attention (`v_proj(keys)`)
    to_token_q:    `1 x hw x D` queries of image-to-token attention (`q_proj(keys_with_pe)`)
    """

    keys: Tensor
    keys_with_pe: Tensor
    to_image_k: Tensor
    to_image_v: Tensor
    to_token_q: Tensor


class PreparedImage(NamedTuple):
    """One image made ready for any number of decoder calls (`TwoWayTransformer.prepare_image`).

    key_pe:       `1 x hw x C` positional encoding of the image tokens
    projections:  the first block's projections of the image tokens
    size:         (h, w) of the image embedding
    """

    key_pe: Tensor
    projections: ImageProjections
    size: tuple[int, int]


class TwoWayTransformer(nn.Module):
    """`depth` two-way blocks, then one last token-to-image attention and a LayerNorm."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim,
                activation,
                attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_embedding: Tensor,
        image_pe: Tensor,
        point_embedding: Tensor,
        image_index: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run the decoder transformer.

        Args:
            image_embedding: `N x C x h x w`, one per prompt; with `image_index`,
                `B x C x h x w`, one per image, shared by all prompts of that image.
            image_pe: `N x C x h x w` (or `1 x C x h x w`) positional encoding of the
                image tokens.
            point_embedding: `N x T x C` output and prompt tokens (also their query PE).
            image_index: LongTensor `N`, the image of each prompt (see the module doc).

        Returns:
            tokens `N x T x C` and image tokens `N x hw x C`.
        """
        keys = image_embedding.flatten(2).transpose(1, 2)  # B x hw x C (N without index)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        layers = list(self.layers)
        if image_index is not None:
            queries, keys = layers.pop(0).forward_shared_image(
                queries, keys, point_embedding, key_pe, image_index
            )
            key_pe = key_pe.expand(keys.shape[0], -1, -1)
        return self._finish(layers, queries, keys, point_embedding, key_pe)

    def prepare_image(self, image_embedding: Tensor, image_pe: Tensor) -> PreparedImage:
        """The prompt-independent work on one image, for `forward_prepared`.

        Args:
            image_embedding: `1 x C x h x w` image tokens (with the dense prompt added).
            image_pe: `1 x C x h x w` their positional encoding.
        """
        if image_embedding.shape[0] != 1:
            raise ValueError(f"prepare_image takes one image, got {image_embedding.shape[0]}")
        # contiguous: every call adds them to its prompts' `N x hw x C` image tokens
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()  # 1 x hw x C
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        projections = self.layers[0].project_image(keys, key_pe)
        return PreparedImage(key_pe, projections, tuple(image_embedding.shape[-2:]))

    def forward_prepared(
        self, prepared: PreparedImage, point_embedding: Tensor
    ) -> tuple[Tensor, Tensor]:
        """`forward` of N prompts on one prepared image: tokens `N x T x C` and image
        tokens `N x hw x C`, equal to `forward(image_embedding, image_pe, point_embedding,
        image_index=zeros(N))` on the image that `prepared` was made from."""
        first, *layers = self.layers
        queries, keys = first.forward_one_image(
            point_embedding, point_embedding, prepared.projections
        )
        key_pe = prepared.key_pe.expand(keys.shape[0], -1, -1)
        return self._finish(layers, queries, keys, point_embedding, key_pe)

    def _finish(
        self,
        layers: list[TwoWayAttentionBlock],
        queries: Tensor,
        keys: Tensor,
        query_pe: Tensor,
        key_pe: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """The remaining `layers`, the final token-to-image attention and its LayerNorm on
        per-prompt tokens `N x T x C` and image tokens `N x hw x C`."""
        for layer in layers:
            queries, keys = layer(queries, keys, query_pe=query_pe, key_pe=key_pe)
        attn = self.final_attn_token_to_image.attend_image(queries + query_pe, keys + key_pe, keys)
        queries = self.norm_final_attn(queries + attn)
        return queries, keys


class TwoWayAttentionBlock(nn.Module):
    """Self-attn (tokens), cross-attn (tokens -> image), MLP (tokens), cross-attn (image -> tokens).

    The first block of the stack skips the PE in its self-attention and replaces the
    tokens with the attention output instead of adding it, as the official model does.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Tokens `B x T x C`, image tokens `B x hw x C` -> both, updated."""
        queries = self._self_attend(queries, query_pe)
        k = keys + key_pe  # the image tokens do not change until the last attention: once
        q = queries + query_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image.attend_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token.attend_tokens(k, q, queries))
        return queries, keys

    def forward_shared_image(
        self,
        queries: Tensor,
        image_keys: Tensor,
        query_pe: Tensor,
        key_pe: Tensor,
        image_index: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """`forward` for prompts whose image tokens are shared per image.

        Args:
            queries, query_pe: `N x T x C` tokens of N prompts.
            image_keys: `B x hw x C`, the image tokens of B images.
            key_pe: `1 x hw x C` or `B x hw x C`.
            image_index: LongTensor `N`, the image of each prompt.

        Returns:
            tokens `N x T x C` and per-prompt image tokens `N x hw x C`, equal to
            `forward(queries, image_keys[image_index], ...)`.
        """
        if image_keys.shape[0] == 1:  # one image: no per-prompt copies of its tokens at all
            return self.forward_one_image(
                queries, query_pe, self.project_image(image_keys, key_pe[:1])
            )
        queries = self._self_attend(queries, query_pe)
        keys_with_pe = image_keys + key_pe  # B x hw x C
        to_image = self.cross_attn_token_to_image
        k = to_image.k_proj(keys_with_pe)[image_index]  # once per image, then per prompt
        v = to_image.v_proj(image_keys)[image_index]
        out = to_image.attend(to_image.q_proj(queries + query_pe), k, v)
        queries = self.norm2(queries + out)
        queries = self.norm3(queries + self.mlp(queries))

        to_token = self.cross_attn_image_to_token
        q = to_token.q_proj(keys_with_pe)[image_index]
        out = to_token.attend_tokens(q, queries + query_pe, queries, projected=True)
        keys = self.norm4(image_keys[image_index] + out)
        return queries, keys

    def _self_attend(self, queries: Tensor, query_pe: Tensor) -> Tensor:
        """The tokens' self-attention and its LayerNorm: `N x T x C` -> `N x T x C`."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        return self.norm1(queries)

    def project_image(self, image_keys: Tensor, key_pe: Tensor) -> ImageProjections:
        """This block's projections of one image's tokens (`image_keys`, `key_pe`:
        `1 x hw x C`), which are the same for every prompt on that image."""
        keys_with_pe = image_keys + key_pe
        return ImageProjections(
            keys=image_keys,
            keys_with_pe=keys_with_pe,
            to_image_k=self.cross_attn_token_to_image.k_proj(keys_with_pe),
            to_image_v=self.cross_attn_token_to_image.v_proj(image_keys),
            to_token_q=self.cross_attn_image_to_token.q_proj(keys_with_pe),
        )

    def forward_one_image(
        self, queries: Tensor, query_pe: Tensor, image: ImageProjections
    ) -> tuple[Tensor, Tensor]:
        """`forward` for N prompts on one image, given that image's projections: the
        prompts' tokens are stacked along the query (or key) axis, so the image's
        projections are used as they are, never copied per prompt.

        Args:
            queries, query_pe: `N x T x C` tokens of N prompts.
            image: `project_image` of the image tokens (`1 x hw x ...`).

        Returns:
            tokens `N x T x C` and per-prompt image tokens `N x hw x C`, equal to
            `forward(queries, image.keys.expand(N, -1, -1), query_pe, key_pe)`.
        """
        queries = self._self_attend(queries, query_pe)
        N, T, C = queries.shape
        to_image = self.cross_attn_token_to_image
        q = to_image.q_proj(queries + query_pe).reshape(1, N * T, -1)
        out = to_image.attend(q, image.to_image_k, image.to_image_v)
        queries = self.norm2(queries + out.reshape(N, T, C))
        queries = self.norm3(queries + self.mlp(queries))

        to_token = self.cross_attn_image_to_token
        if not to_token.reorders(T):  # adapted projections or many tokens: the plain order
            image_q = image.to_token_q.expand(N, -1, -1)
            out = to_token.attend_tokens(image_q, queries + query_pe, queries, projected=True)
            return queries, self.norm4(image.keys + out)
        heads = to_token.num_heads
        head_dim = to_token.internal_dim // heads
        hw = image.keys.shape[1]
        image_q = image.to_token_q.reshape(hw, heads, head_dim).permute(1, 2, 0)  # H x d x hw
        key = to_token.k_proj(queries + query_pe).reshape(N * T, heads, head_dim)
        logits = key.transpose(0, 1) @ image_q * head_dim**-0.5  # H x NT x hw
        weights = logits.reshape(heads, N, T, hw).softmax(dim=2)  # over each prompt's tokens
        weights = weights.permute(1, 0, 2, 3).reshape(N, heads * T, hw)
        out = to_token.pool_tokens(weights, queries)
        return queries, self.norm4(image.keys + out)

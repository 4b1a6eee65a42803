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
"""

from __future__ import annotations

from torch import Tensor, nn

from samft.model.attention import Attention
from samft.model.common import MLPBlock


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
        for layer in layers:
            queries, keys = layer(queries, keys, query_pe=point_embedding, key_pe=key_pe)
        attn = self.final_attn_token_to_image.attend_image(
            queries + point_embedding, keys + key_pe, keys
        )
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
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image.attend_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q, k = queries + query_pe, keys + key_pe
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
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        keys_with_pe = image_keys + key_pe  # B x hw x C
        if image_keys.shape[0] == 1:  # one image: no per-prompt copies of its tokens at all
            return self._one_image(queries, image_keys, keys_with_pe, query_pe)
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

    def _one_image(
        self, queries: Tensor, image_keys: Tensor, keys_with_pe: Tensor, query_pe: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The two cross-attentions of `forward_shared_image` when all N prompts share one
        image (`image_keys`, `keys_with_pe`: `1 x hw x C`): the prompts' tokens are stacked
        along the query (or key) axis, so the image's projections are used as they are."""
        N, T, C = queries.shape
        to_image = self.cross_attn_token_to_image
        heads = to_image.num_heads
        q = to_image.q_proj(queries + query_pe).reshape(1, N * T, -1)
        out = to_image.attend(q, to_image.k_proj(keys_with_pe), to_image.v_proj(image_keys))
        queries = self.norm2(queries + out.reshape(N, T, C))
        queries = self.norm3(queries + self.mlp(queries))

        to_token = self.cross_attn_image_to_token
        if not to_token.reorders(T):  # adapted projections or many tokens: the plain order
            image_q = to_token.q_proj(keys_with_pe).expand(N, -1, -1)
            out = to_token.attend_tokens(image_q, queries + query_pe, queries, projected=True)
            return queries, self.norm4(image_keys + out)
        head_dim = to_token.internal_dim // heads
        hw = image_keys.shape[1]
        image_q = to_token.q_proj(keys_with_pe).reshape(hw, heads, head_dim).permute(1, 2, 0)
        key = to_token.k_proj(queries + query_pe).reshape(N * T, heads, head_dim)
        logits = key.transpose(0, 1) @ image_q * head_dim**-0.5  # H x NT x hw
        weights = logits.reshape(heads, N, T, hw).softmax(dim=2)  # over each prompt's tokens
        weights = weights.permute(1, 0, 2, 3).reshape(N, heads * T, hw)
        value = to_token.v_proj(queries).reshape(N, T, heads, head_dim).transpose(1, 2)
        out_weight = to_token.out_proj.weight.reshape(-1, heads, head_dim).transpose(0, 1)
        mixed = (value @ out_weight.transpose(1, 2)).reshape(N, heads * T, C)  # N x HT x C
        out = weights.transpose(1, 2) @ mixed + to_token.out_proj.bias
        keys = self.norm4(image_keys + out)
        return queries, keys

"""The mask decoder's multi-head attention, with two cheaper orders for few prompt tokens.

The decoder's cross-attentions pair a handful of prompt tokens (T: the output tokens and
the prompt's points, about 7) with thousands of image tokens (hw = 4096 at 64 x 64), and
their projections shrink the width from C to D = C / 2. Projecting every image token costs
hw x C x D multiply-adds per projection, more than the attention itself. When the heads
times the tokens are fewer than D, the same attention is cheaper with the products taken
in another order (exact in real arithmetic; in float32 it differs by rounding only):

- tokens to image (`attend_image`): fold the key projection into the queries
  (q_h W_k,h is T x C per head) and pool the raw image tokens with the attention weights
  before the value projection (weights sum to one, so the value bias passes through). The
  key bias adds the same logit to every image token of a query: softmax ignores it.
- image to tokens (`attend_tokens`): fold each head's token keys into the query projection
  (W_q,h^T k_h^T is C x T) and the value projection into the output projection
  (v_h W_o,h^T is T x C), so the hw x D queries and outputs are never formed.

Both cost about 2 x hw x C x (heads x T) instead of 2 x hw x C x D (the decoder of a
single-point prompt: 56 against 128), and keep the attention weights `N x heads x T x hw`
rather than `N x hw x D` projections, which also saves memory in training. A projection
replaced by another layer type (for example a LoRA adapter) keeps the plain order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head attention whose projections can shrink the width by `downsample_rate`."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(
                f"attention width {self.internal_dim} is not divisible by {num_heads} heads"
            )
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _split_heads(self, x: Tensor) -> Tensor:
        """`B x N x D -> B x heads x N x D/heads`."""
        B, N, D = x.shape
        return x.reshape(B, N, self.num_heads, D // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """`q: B x Nq x C`, `k, v: B x Nk x C` -> `B x Nq x C`."""
        return self.attend(self.q_proj(q), self.k_proj(k), self.v_proj(v))

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention on inputs already projected: `B x Nq x D`, `B x Nk x D` -> `B x Nq x C`."""
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        out = F.scaled_dot_product_attention(q, k, v)
        B, _, N, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, N, self.internal_dim))

    def reorders(self, num_tokens: int) -> bool:
        """Whether attention with `num_tokens` prompt tokens is cheaper reordered."""
        plain = all(
            type(layer) is nn.Linear
            for layer in (self.q_proj, self.k_proj, self.v_proj, self.out_proj)
        )
        return plain and self.num_heads * num_tokens < self.internal_dim

    def _head_weights(self, layer: nn.Linear) -> Tensor:
        """A projection's weight `D x C` as `heads x D/heads x C`."""
        return layer.weight.reshape(self.num_heads, -1, layer.weight.shape[1])

    def attend_image(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Prompt tokens attend to image tokens, equal to `forward(q, k, v)`.

        Args:
            q: `N x T x C` prompt tokens (positional encoding added).
            k: `N x hw x C` image tokens with their positional encoding.
            v: `N x hw x C` image tokens.

        Returns:
            `N x T x C`.
        """
        N, T, _ = q.shape
        if not self.reorders(T):
            return self(q, k, v)
        heads, head_dim = self.num_heads, self.internal_dim // self.num_heads
        query = self.q_proj(q).reshape(N, T, heads, head_dim)
        # logits_h = q_h (k W_k,h^T + b)^T: the bias term is constant along the image tokens
        folded = query.permute(0, 2, 1, 3) @ self._head_weights(self.k_proj)  # N x H x T x C
        folded = folded.reshape(N, heads * T, -1) * head_dim**-0.5
        weights = (folded @ k.transpose(1, 2)).softmax(dim=-1)  # N x HT x hw
        pooled = (weights @ v).reshape(N, heads, T, -1)  # N x H x T x C
        out = pooled @ self._head_weights(self.v_proj).transpose(1, 2)  # N x H x T x d
        out = out + self.v_proj.bias.reshape(1, heads, 1, head_dim)
        return self.out_proj(out.transpose(1, 2).reshape(N, T, self.internal_dim))

    def attend_tokens(self, q: Tensor, k: Tensor, v: Tensor, projected: bool = False) -> Tensor:
        """Image tokens attend to prompt tokens, equal to `forward(q, k, v)` (or to
        `attend(q, k_proj(k), v_proj(v))` with `projected`).

        Args:
            q: `N x hw x C` image tokens with their positional encoding; with `projected`,
                their queries `N x hw x D` (already through `q_proj`).
            k: `N x T x C` prompt tokens (positional encoding added).
            v: `N x T x C` prompt tokens.

        Returns:
            `N x hw x C`.
        """
        N, T, _ = k.shape
        if not self.reorders(T):
            return self.attend(q, self.k_proj(k), self.v_proj(v)) if projected else self(q, k, v)
        heads, head_dim = self.num_heads, self.internal_dim // self.num_heads
        scale = head_dim**-0.5
        key = self.k_proj(k).reshape(N, T, heads, head_dim).transpose(1, 2)  # N x H x T x d
        if projected:
            hw = q.shape[1]
            query = q.reshape(N, hw, heads, head_dim).transpose(1, 2)  # N x H x hw x d
            logits = key @ query.transpose(2, 3) * scale  # N x H x T x hw
        else:
            # k_h q_h^T = (k_h W_q,h) x^T + k_h b_q,h
            folded = key @ self._head_weights(self.q_proj) * scale  # N x H x T x C
            bias = key @ self.q_proj.bias.reshape(1, heads, head_dim, 1) * scale  # N x H x T x 1
            logits = folded.reshape(N, heads * T, -1) @ q.transpose(1, 2)  # N x HT x hw
            logits = logits.reshape(N, heads, T, -1) + bias
        # softmax over the T tokens with the image tokens innermost: a softmax along a
        # last dimension of ~7 elements is an order of magnitude slower on the CPU
        weights = logits.softmax(dim=2).reshape(N, heads * T, -1)  # N x HT x hw
        return self.pool_tokens(weights, v)

    def pool_tokens(self, weights: Tensor, v: Tensor) -> Tensor:
        """The end of reordered image-to-token attention: each head's attention weights
        pool the prompt tokens' values, with the value projection folded into the output
        projection (`v_h W_v,h^T W_o,h^T` is T x C per head).

        Args:
            weights: `N x heads*T x hw` attention weights (head-major), each image token's
                weights over the T tokens of its prompt summing to one per head.
            v: `N x T x C` prompt tokens.

        Returns:
            `N x hw x C`, the attention output after `out_proj`.
        """
        N, T, _ = v.shape
        heads, head_dim = self.num_heads, self.internal_dim // self.num_heads
        value = self.v_proj(v).reshape(N, T, heads, head_dim).transpose(1, 2)  # N x H x T x d
        out_weight = self.out_proj.weight.reshape(-1, heads, head_dim).transpose(0, 1)
        mixed = (value @ out_weight.transpose(1, 2)).reshape(N, heads * T, -1)  # N x HT x C
        return torch.baddbmm(self.out_proj.bias, weights.transpose(1, 2), mixed)

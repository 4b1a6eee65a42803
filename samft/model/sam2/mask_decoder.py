"""SAM 2's mask decoder: SAM's, plus high-resolution skip features and an object score.

What SAM 2 changes in SAM's decoder (`samft.model.mask_decoder.MaskDecoder`):

* an object-score token goes before the IoU and mask tokens; a 3-layer MLP on its output
  gives one logit per prompt, "is the object in the image at all";
* the upscaling adds the encoder's two high-resolution levels, already projected by
  `conv_s1` (to C/4, at 2h x 2w) and `conv_s0` (to C/8, at 4h x 4w), after each
  transposed convolution;
* the IoU head ends in a sigmoid;
* asked for a single mask at inference, it falls back to the best multimask output
  (by predicted IoU) when the single mask is unstable: fewer than `thresh` of the pixels
  above `-delta` are above `+delta` (Meta's `build_sam2` turns this on).

Inference on a prepared image (`prepare_image`, then `predict_prepared` per call, as the
automatic mask generator does) does the transformer's prompt-independent work on the image
once, as SAM's decoder does.

The two-way transformer and the attention are samft's (`TwoWayTransformer`, with its
batched and reordered paths); only its token MLP is named as in `sam2` (`mlp.layers.<i>`,
samft's `MLP`, the same ReLU two-layer computation as SAM's `mlp.lin1/lin2`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from samft.model.common import LayerNorm2d
from samft.model.mask_decoder import MLP, attend
from samft.model.transformer import PreparedImage, TwoWayTransformer


class PreparedSam2Image(NamedTuple):
    """One image made ready for any number of `Sam2MaskDecoder.predict_prepared` calls.

    image:     the transformer's prompt-independent work (`PreparedImage`)
    high_res:  the image's projected high-resolution levels (`1 x C/8 x 4h x 4w`,
               `1 x C/4 x 2h x 2w`), or None for a decoder without them
    """

    image: PreparedImage
    high_res: tuple[Tensor, Tensor] | None


def two_way_transformer(
    depth: int, embedding_dim: int, num_heads: int, mlp_dim: int
) -> TwoWayTransformer:
    """samft's `TwoWayTransformer` with each block's token MLP keyed as in `sam2`."""
    transformer = TwoWayTransformer(depth, embedding_dim, num_heads, mlp_dim)
    for layer in transformer.layers:
        layer.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2)
    return transformer


class Sam2MaskDecoder(nn.Module):
    """Predict masks, IoU scores and an object score from image and prompt embeddings.

    Args:
        transformer_dim: C, the width of the image embedding and the tokens.
        transformer: the two-way transformer (`two_way_transformer`).
        num_multimask_outputs: M, the ambiguity-aware outputs (plus one single mask).
        iou_head_depth, iou_head_hidden_dim: the IoU head MLP.
        use_high_res_features: add the projected high-resolution levels in the upscaling
            (`conv_s0`, `conv_s1`).
        iou_prediction_use_sigmoid: end the IoU head in a sigmoid.
        pred_obj_scores: predict an object score from its own token; otherwise the
            score is a constant 10 (object present).
        pred_obj_scores_mlp: a 3-layer MLP for the object score instead of a linear layer.
        dynamic_multimask_via_stability, dynamic_multimask_stability_delta,
        dynamic_multimask_stability_thresh: the single-mask fallback (module doc).
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        use_high_res_features: bool = True,
        iou_prediction_use_sigmoid: bool = True,
        pred_obj_scores: bool = True,
        pred_obj_scores_mlp: bool = True,
        dynamic_multimask_via_stability: bool = True,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
    ) -> None:
        super().__init__()
        C = transformer_dim
        self.transformer_dim = C
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, C)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, C)
        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, C)

        # h x w -> 4h x 4w, C -> C/8 (the high-res levels join after each conv)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(C, C // 4, kernel_size=2, stride=2),
            LayerNorm2d(C // 4),
            nn.GELU(),
            nn.ConvTranspose2d(C // 4, C // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            self.conv_s0 = nn.Conv2d(C, C // 8, kernel_size=1)  # S/4 level
            self.conv_s1 = nn.Conv2d(C, C // 4, kernel_size=1)  # S/8 level
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(C, C, C // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            C,
            iou_head_hidden_dim,
            self.num_mask_tokens,
            iou_head_depth,
            sigmoid_output=iou_prediction_use_sigmoid,
        )
        if pred_obj_scores:
            self.pred_obj_score_head = MLP(C, C, 1, 3) if pred_obj_scores_mlp else nn.Linear(C, 1)
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    def project_high_res(self, level0: Tensor, level1: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder's S/4 and S/8 levels (`B x C x 4h x 4w`, `B x C x 2h x 2w`) ->
        `B x C/8 x 4h x 4w` and `B x C/4 x 2h x 2w`, as the upscaling adds them."""
        return self.conv_s0(level0), self.conv_s1(level1)

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        high_res_features: tuple[Tensor, Tensor] | None = None,
        image_index: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Decode N prompts.

        Args:
            image_embeddings: `1 x C x h x w` shared by all prompts, or with `image_index`
                `B x C x h x w` for B images.
            image_pe: `1 x C x h x w` (`PromptEncoder.get_dense_pe()`).
            sparse_prompt_embeddings: `N x T x C`.
            dense_prompt_embeddings: `N x C x h x w`.
            multimask_output: return the M multimask outputs instead of the single one.
            high_res_features: `project_high_res` of the image(s): `1 (or B) x C/8 x 4h x 4w`
                and `1 (or B) x C/4 x 2h x 2w`; required with `use_high_res_features`.
            image_index: LongTensor `N`, the image of each prompt.

        Returns:
            low-res mask logits `N x M' x 4h x 4w`, IoU predictions `N x M'` (M' = M with
            multimask_output, else 1) and object-score logits `N x 1`.
        """
        masks, iou_pred, object_score = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            high_res_features,
            image_index,
        )
        return (*self.select_outputs(masks, iou_pred, multimask_output), object_score)

    def select_outputs(
        self, masks: Tensor, iou_pred: Tensor, multimask_output: bool
    ) -> tuple[Tensor, Tensor]:
        """The outputs `forward` returns of all `N x (M+1) x H x W` masks and their
        `N x (M+1)` scores: the M multimask ones, or the single one (at inference, the
        best multimask one where it is unstable: `stable_single_mask`)."""
        if multimask_output:
            return masks[:, 1:], iou_pred[:, 1:]
        if self.dynamic_multimask_via_stability and not self.training:
            return self.stable_single_mask(masks, iou_pred)
        return masks[:, :1], iou_pred[:, :1]

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        high_res_features: tuple[Tensor, Tensor] | None = None,
        image_index: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """All `M + 1` masks `N x (M+1) x 4h x 4w`, their scores `N x (M+1)` and the
        object-score logits `N x 1` (arguments as `forward`)."""
        N = sparse_prompt_embeddings.shape[0]
        tokens = self._tokens(sparse_prompt_embeddings)
        if image_index is None:  # one image for all N prompts
            image_index = torch.zeros(N, dtype=torch.long, device=tokens.device)
        hs, src = attend(
            self.transformer, image_embeddings, image_pe, dense_prompt_embeddings, tokens,
            image_index,
        )  # fmt: skip
        size = image_embeddings.shape[-2:]
        return self._outputs(hs, src, size, high_res_features, image_index)

    def prepare_image(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        dense_prompt_embeddings: Tensor,
        high_res_features: tuple[Tensor, Tensor] | None = None,
    ) -> PreparedSam2Image:
        """One image's prompt-independent decoder work, for `predict_prepared`.

        Args:
            image_embeddings: `1 x C x h x w`.
            image_pe: `1 x C x h x w` (`PromptEncoder.get_dense_pe()`).
            dense_prompt_embeddings: `1 x C x h x w`: the dense embedding of every prompt
                that will be decoded on it (no mask prompt).
            high_res_features: `project_high_res` of the image (`1 x C/8 x 4h x 4w`,
                `1 x C/4 x 2h x 2w`).
        """
        src = image_embeddings + dense_prompt_embeddings[:1]
        return PreparedSam2Image(self.transformer.prepare_image(src, image_pe), high_res_features)

    def predict_prepared(
        self, prepared: PreparedSam2Image, sparse_prompt_embeddings: Tensor, multimask_output: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`forward` for N prompts (`N x T x C`) on a prepared image, equal to it with the
        inputs `prepared` was made from: low-res logits `N x M' x 4h x 4w`, IoU predictions
        `N x M'` and object-score logits `N x 1`."""
        N = sparse_prompt_embeddings.shape[0]
        tokens = self._tokens(sparse_prompt_embeddings)
        hs, src = self.transformer.forward_prepared(prepared.image, tokens)
        image_index = torch.zeros(N, dtype=torch.long, device=tokens.device)
        masks, iou_pred, object_score = self._outputs(
            hs, src, prepared.image.size, prepared.high_res, image_index
        )
        return (*self.select_outputs(masks, iou_pred, multimask_output), object_score)

    def _tokens(self, sparse_prompt_embeddings: Tensor) -> Tensor:
        """The output tokens before each prompt's tokens: `N x T x C` -> `N x T' x C`."""
        N = sparse_prompt_embeddings.shape[0]
        return torch.cat([self._output_tokens(N), sparse_prompt_embeddings], dim=1)

    def _outputs(
        self,
        hs: Tensor,
        src: Tensor,
        size: Sequence[int],
        high_res_features: tuple[Tensor, Tensor] | None,
        image_index: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The transformer's tokens (`hs` N x T' x C) and image tokens (`src` N x hw x C,
        an h x w grid) -> all masks `N x (M+1) x 4h x 4w`, their scores and the
        object-score logits `N x 1`."""
        N, _, C = src.shape
        h, w = int(size[0]), int(size[1])
        first = 1 if self.pred_obj_scores else 0  # the object-score token comes first
        iou_token_out = hs[:, first]
        mask_tokens_out = hs[:, first + 1 : first + 1 + self.num_mask_tokens]

        upscaled = self._upscale(
            src.transpose(1, 2).reshape(N, C, h, w), high_res_features, image_index
        )
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )  # N x (M+1) x C/8
        _, c, uh, uw = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(N, c, uh * uw)).reshape(N, -1, uh, uw)

        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score = self.pred_obj_score_head(hs[:, 0])
        else:
            object_score = iou_pred.new_full((N, 1), 10.0)
        return masks, iou_pred, object_score

    def _output_tokens(self, num_prompts: int) -> Tensor:
        """`N x (1 + 1 + M+1) x C`: object-score (if any), IoU and mask tokens."""
        tokens = [self.iou_token.weight, self.mask_tokens.weight]
        if self.pred_obj_scores:
            tokens.insert(0, self.obj_score_token.weight)
        return torch.cat(tokens, dim=0)[None].expand(num_prompts, -1, -1)

    def _upscale(
        self,
        src: Tensor,
        high_res_features: tuple[Tensor, Tensor] | None,
        image_index: Tensor,
    ) -> Tensor:
        """`N x C x h x w` image tokens -> `N x C/8 x 4h x 4w`, adding each prompt's
        image's high-resolution features after each transposed convolution."""
        if not self.use_high_res_features:
            return self.output_upscaling(src)
        if high_res_features is None:
            raise ValueError("this decoder uses high-resolution features: pass them")
        feat_s0, feat_s1 = high_res_features
        if feat_s0.shape[0] > 1:  # several images: each prompt's own
            feat_s0, feat_s1 = feat_s0[image_index], feat_s1[image_index]
        conv1, norm, act1, conv2, act2 = self.output_upscaling
        x = act1(norm(conv1(src) + feat_s1))
        return act2(conv2(x) + feat_s0)

    def stable_single_mask(self, masks: Tensor, iou_pred: Tensor) -> tuple[Tensor, Tensor]:
        """Output 0 where it is stable, else the multimask output with the best predicted
        IoU: `N x (M+1) x H x W`, `N x (M+1)` -> `N x 1 x H x W`, `N x 1`."""
        best = iou_pred[:, 1:].argmax(dim=1)
        rows = torch.arange(masks.shape[0], device=masks.device)
        best_masks = masks[rows, best + 1][:, None]
        best_iou = iou_pred[rows, best + 1][:, None]
        single = masks[:, :1]
        stable = stability_score(single, self.dynamic_multimask_stability_delta)
        stable = stable >= self.dynamic_multimask_stability_thresh  # N x 1
        chosen = torch.where(stable[..., None, None], single, best_masks)
        return chosen, torch.where(stable, iou_pred[:, :1], best_iou)


def stability_score(logits: Tensor, delta: float) -> Tensor:
    """`... x H x W` logits -> `...`: pixels above `+delta` over pixels above `-delta`
    (1 where none is above `-delta`)."""
    logits = logits.flatten(-2)
    inner = (logits > delta).sum(dim=-1).float()
    outer = (logits > -delta).sum(dim=-1).float()
    return torch.where(outer > 0, inner / outer, 1.0)

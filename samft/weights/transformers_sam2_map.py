"""What a transformers `Sam2Model` checkpoint is, in samft's terms: keys and configs.

transformers (>= 4.56) has SAM 2's image model as `Sam2Model` (`model_type` "sam2"). Its
state dict holds the same tensors as Meta's image model under other names:
`sam2_to_transformers` / `transformers_to_sam2` rename one into the other through the
table `KEY_MAP` (`samft.weights.key_templates`: `{mlp}` renumbers MLP layers, `{i}`,
`{n}`, `{p}` are carried over). `sam2_transformers_config` and
`sam2_preprocessor_config` give `config.json` and `preprocessor_config.json` for a samft
SAM 2 variant. No I/O here and no transformers import
(`samft.weights.transformers_layout` reads and writes folders).

Where the two layouts differ in more than names:

* The four point-label embeddings: Meta keeps four `1 x C` tables
  (`sam_prompt_encoder.point_embeddings.<k>.weight`), transformers one `4 x C` table
  (`prompt_encoder.point_embed.weight`, row k = label k). They are stacked and split.
* The random-Fourier matrix (`pe_layer.positional_encoding_gaussian_matrix`, `2 x C/2`)
  is one tensor in Meta's model and two buffers in transformers' (the image grid's
  `shared_image_embedding.positional_embedding` and the points'
  `prompt_encoder.shared_embedding.positional_embedding`): written twice, read from
  either, two that differ refused.
* `Sam2Model` is the image model only: Meta's video parts (memory attention, memory
  encoder, ...) have no place in it. `sam2_to_transformers` leaves them out; callers say
  so (`samft.weights.sam2_layout.video_keys`).

`Sam2Model` computes what samft's `Sam2` computes: Hiera with the same windows, pooling
and position embeddings, the FPN neck without its lowest level, `no_mem_embed` (its
`no_memory_embedding`) added to the S/16 level, `conv_s0` / `conv_s1` on the two higher
levels, SAM's prompt encoder and the SAM 2 decoder with its object-score token and the
single-mask stability fallback. Its decoder's two-way MLP has `num_hidden_layers` layers
(the decoder depth): a depth other than 2 does not fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from samft.model.registry import Sam2HyperParams
from samft.model.sam2.carried import is_video_part
from samft.model.sam2.model import IMAGENET_MEAN, IMAGENET_STD
from samft.weights.files import CheckpointError
from samft.weights.key_templates import META, TRANSFORMERS, KeyTemplates
from samft.weights.transformers_map import untie_positional_encoding

MODEL_TYPE = "sam2"
HF_PATCH = "vision_encoder.backbone.patch_embed.projection.weight"
META_PE = "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
HF_PE = "shared_image_embedding.positional_embedding"
HF_PE_TIED = "prompt_encoder.shared_embedding.positional_embedding"
META_POINT = "sam_prompt_encoder.point_embeddings.{k}.weight"
HF_POINT = "prompt_encoder.point_embed.weight"
NUM_POINT_EMBEDDINGS = 4  # labels 0 (negative), 1 (positive), 2 and 3 (box corners)

_TRUNK, _HF_TRUNK = "image_encoder.trunk.", "vision_encoder.backbone."
_PE, _HF_PE = "sam_prompt_encoder.", "prompt_encoder."
_MD, _HF_MD = "sam_mask_decoder.", "mask_decoder."
_LAYER = "transformer.layers.{i}."
_ATTN = _LAYER + "{attn}"
_HYPER = "output_hypernetworks_mlps.{i}.{mlp}.{p}"
KEY_MAP: tuple[tuple[str, str], ...] = (
    ("no_mem_embed", "no_memory_embedding"),
    # Hiera trunk <-> backbone
    (_TRUNK + "pos_embed", _HF_TRUNK + "pos_embed"),
    (_TRUNK + "pos_embed_window", _HF_TRUNK + "pos_embed_window"),
    (_TRUNK + "patch_embed.proj.{p}", _HF_TRUNK + "patch_embed.projection.{p}"),
    (_TRUNK + "blocks.{i}.norm{n}.{p}", _HF_TRUNK + "blocks.{i}.layer_norm{n}.{p}"),
    (_TRUNK + "blocks.{i}.attn.{linear}.{p}", _HF_TRUNK + "blocks.{i}.attn.{linear}.{p}"),
    (_TRUNK + "blocks.{i}.mlp.{mlp}.{p}", _HF_TRUNK + "blocks.{i}.mlp.{mlp}.{p}"),
    (_TRUNK + "blocks.{i}.proj.{p}", _HF_TRUNK + "blocks.{i}.proj.{p}"),
    # FPN neck: Meta wraps each lateral conv in a module of its own
    ("image_encoder.neck.convs.{i}.conv.{p}", "vision_encoder.neck.convs.{i}.{p}"),
    # prompt encoder (the point tables and the Fourier matrix: module doc)
    (META_PE, HF_PE),
    (_PE + "not_a_point_embed.weight", _HF_PE + "not_a_point_embed.weight"),
    (_PE + "no_mask_embed.weight", _HF_PE + "no_mask_embed.weight"),
    (_PE + "mask_downscaling.0.{p}", _HF_PE + "mask_embed.conv1.{p}"),
    (_PE + "mask_downscaling.1.{p}", _HF_PE + "mask_embed.layer_norm1.{p}"),
    (_PE + "mask_downscaling.3.{p}", _HF_PE + "mask_embed.conv2.{p}"),
    (_PE + "mask_downscaling.4.{p}", _HF_PE + "mask_embed.layer_norm2.{p}"),
    (_PE + "mask_downscaling.6.{p}", _HF_PE + "mask_embed.conv3.{p}"),
    # mask decoder
    (_MD + "{token}.weight", _HF_MD + "{token}.weight"),
    (_MD + _ATTN + ".{qkv}.{p}", _HF_MD + _ATTN + ".{qkv}.{p}"),
    (_MD + _ATTN + ".out_proj.{p}", _HF_MD + _ATTN + ".o_proj.{p}"),
    (_MD + _LAYER + "norm{n}.{p}", _HF_MD + _LAYER + "layer_norm{n}.{p}"),
    (_MD + _LAYER + "mlp.{mlp}.{p}", _HF_MD + _LAYER + "mlp.{mlp}.{p}"),
    (
        _MD + "transformer.final_attn_token_to_image.{qkv}.{p}",
        _HF_MD + "transformer.final_attn_token_to_image.{qkv}.{p}",
    ),
    (
        _MD + "transformer.final_attn_token_to_image.out_proj.{p}",
        _HF_MD + "transformer.final_attn_token_to_image.o_proj.{p}",
    ),
    (_MD + "transformer.norm_final_attn.{p}", _HF_MD + "transformer.layer_norm_final_attn.{p}"),
    (_MD + "output_upscaling.0.{p}", _HF_MD + "upscale_conv1.{p}"),
    (_MD + "output_upscaling.1.{p}", _HF_MD + "upscale_layer_norm.{p}"),
    (_MD + "output_upscaling.3.{p}", _HF_MD + "upscale_conv2.{p}"),
    (_MD + "conv_s{n}.{p}", _HF_MD + "conv_s{n}.{p}"),
    (_MD + _HYPER, _HF_MD + _HYPER),
    (_MD + "{head}.{mlp}.{p}", _HF_MD + "{head}.{mlp}.{p}"),
)  # fmt: skip

KEYS = KeyTemplates(
    KEY_MAP,
    groups={
        "linear": r"qkv|proj",
        "attn": r"self_attn|cross_attn_token_to_image|cross_attn_image_to_token",
        "qkv": r"q_proj|k_proj|v_proj",
        "token": r"iou_token|mask_tokens|obj_score_token",
        "head": r"iou_prediction_head|pred_obj_score_head",
    },
    layouts=("Meta's sam2 image model", "transformers' Sam2Model"),
)


def is_transformers_sam2_state_dict(state_dict: Iterable[str]) -> bool:
    """Whether the keys are a transformers `Sam2Model`'s (its Hiera backbone)."""
    return HF_PATCH in state_dict


def sam2_to_transformers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Meta's SAM 2 keys -> `Sam2Model` keys, without the video parts (module doc)."""
    image = {k: v for k, v in state_dict.items() if not is_video_part(k)}
    rows = [image.pop(META_POINT.format(k=k), None) for k in range(NUM_POINT_EMBEDDINGS)]
    if any(row is None for row in rows):
        missing = [META_POINT.format(k=k) for k, row in enumerate(rows) if row is None]
        raise CheckpointError(f"SAM 2 state dict has no {', '.join(missing)}")
    out = KEYS.rename(image, META)
    out[HF_POINT] = torch.cat(rows, dim=0)  # 4 x C
    out[HF_PE_TIED] = out[HF_PE]  # two buffers in Sam2Model; written apart by the caller
    return out


def transformers_to_sam2(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`Sam2Model` keys -> Meta's SAM 2 keys (the image model). A CheckpointError names
    keys of neither layout and a point table of the wrong shape."""
    state_dict = untie_positional_encoding(state_dict, HF_PE, HF_PE_TIED, "SAM 2")
    table = state_dict.pop(HF_POINT, None)
    if table is None or table.ndim != 2 or table.shape[0] != NUM_POINT_EMBEDDINGS:
        shape = None if table is None else tuple(table.shape)
        raise CheckpointError(
            f"'{HF_POINT}' has shape {shape}; expected {NUM_POINT_EMBEDDINGS} x C (one row "
            "per point label)"
        )
    out = KEYS.rename(state_dict, TRANSFORMERS)
    for k in range(NUM_POINT_EMBEDDINGS):
        out[META_POINT.format(k=k)] = table[k : k + 1].clone()  # 1 x C, its own storage
    return out


def _doubling(first: int, stages: int) -> list[int]:
    return [first * 2**k for k in range(stages)]


def sam2_transformers_config(
    hp: Sam2HyperParams, image_size: int | None = None, dtype: str = "float32"
) -> dict[str, Any]:
    """`config.json` of a `Sam2Model` with the architecture of `hp` at `image_size` px
    (None: the variant's). A CheckpointError for what `Sam2Model` cannot express."""
    size = int(image_size or hp.image_size)
    unsupported = {
        "decoder_depth": (hp.decoder_depth, 2),
        "pred_obj_scores_mlp": (hp.pred_obj_scores_mlp, True),
        "stages": (len(hp.stages), 4),
    }
    for name, (value, needed) in unsupported.items():
        if value != needed:
            raise CheckpointError(
                f"transformers' Sam2Model needs {name}={needed!r}; this SAM 2 has {value!r}"
            )
    dim = hp.prompt_embed_dim
    widths = _doubling(hp.embed_dim, len(hp.stages))  # Hiera doubles width and heads
    return {
        "architectures": ["Sam2Model"],
        "model_type": MODEL_TYPE,
        "dtype": dtype,
        "initializer_range": 0.02,
        "vision_config": {
            "model_type": "sam2_vision_model",
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": hp.embed_dim,
                "num_attention_heads": hp.num_heads,
                "num_channels": 3,
                "image_size": [size, size],
                "patch_kernel_size": [7, 7],
                "patch_stride": [4, 4],
                "patch_padding": [3, 3],
                "query_stride": [2, 2],
                "window_positional_embedding_background_size": list(
                    hp.window_pos_embed_bkg_spatial_size
                ),
                "num_query_pool_stages": hp.q_pool,
                "blocks_per_stage": list(hp.stages),
                "embed_dim_per_stage": widths,
                "num_attention_heads_per_stage": _doubling(hp.num_heads, len(hp.stages)),
                "window_size_per_stage": list(hp.window_spec),
                "global_attention_blocks": list(hp.global_att_blocks),
                "mlp_ratio": 4.0,
                "hidden_act": "gelu",
                "layer_norm_eps": 1e-6,
            },
            "backbone_channel_list": widths[::-1],  # lowest resolution first
            "backbone_feature_sizes": [[size // s, size // s] for s in (4, 8, 16)],
            "fpn_hidden_size": dim,
            "fpn_kernel_size": 1,
            "fpn_stride": 1,
            "fpn_padding": 0,
            "fpn_top_down_levels": list(hp.fpn_top_down_levels),
            "num_feature_levels": 3,  # the lowest of four dropped, as Meta's scalp=1
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-6,
        },
        "prompt_encoder_config": {
            "model_type": "sam2_prompt_encoder",
            "hidden_size": dim,
            "image_size": size,
            "patch_size": hp.embedding_stride,
            "mask_input_channels": hp.mask_in_chans,
            "num_point_embeddings": NUM_POINT_EMBEDDINGS,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-6,
            "scale": 1,
        },
        "mask_decoder_config": {
            "model_type": "sam2_mask_decoder",
            "hidden_size": dim,
            "hidden_act": "gelu",
            "mlp_dim": hp.decoder_mlp_dim,
            "num_hidden_layers": hp.decoder_depth,
            "num_attention_heads": hp.decoder_num_heads,
            "attention_downsample_rate": 2,
            "num_multimask_outputs": hp.num_multimask_outputs,
            "iou_head_depth": hp.iou_head_depth,
            "iou_head_hidden_dim": hp.iou_head_hidden_dim,
            "dynamic_multimask_via_stability": hp.dynamic_multimask_via_stability,
            "dynamic_multimask_stability_delta": 0.05,
            "dynamic_multimask_stability_thresh": 0.98,
        },
    }


# config fields the tensor shapes do not show, checked against the variant on reading
CHECKED_FIELDS: tuple[tuple[str, ...], ...] = (
    ("vision_config", "backbone_config", "num_attention_heads_per_stage"),
    ("vision_config", "backbone_config", "window_size_per_stage"),
    ("vision_config", "backbone_config", "global_attention_blocks"),
    ("vision_config", "backbone_config", "num_query_pool_stages"),
    ("vision_config", "backbone_config", "query_stride"),
    ("vision_config", "fpn_top_down_levels"),
    ("vision_config", "num_feature_levels"),
    ("mask_decoder_config", "num_attention_heads"),
    ("mask_decoder_config", "dynamic_multimask_via_stability"),
)


def sam2_preprocessor_config(image_size: int) -> dict[str, Any]:
    """`preprocessor_config.json` for transformers' `Sam2Processor`: RGB, resized to
    `image_size` square (bilinear; the aspect ratio is not kept), scaled to [0, 1],
    ImageNet mean/std, no padding; low-res masks `image_size / 4`."""
    low_res = image_size // 4
    return {
        "image_processor_type": "Sam2ImageProcessor",
        "processor_class": "Sam2Processor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": 2,  # PIL.Image.BILINEAR
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "mask_size": {"height": low_res, "width": low_res},
    }

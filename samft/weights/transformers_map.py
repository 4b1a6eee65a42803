"""What a transformers `SamModel` checkpoint is, in samft's terms: keys and configs.

`official_to_transformers` / `transformers_to_official` rename state dicts;
`transformers_config` and `preprocessor_config` give the contents of `config.json` and
`preprocessor_config.json` for a samft architecture. No I/O here, and no transformers
import (see `samft.weights.transformers_layout` for reading and writing folders).

The key map:
One table, `KEY_MAP`, pairs an official key template with the transformers one; both
directions read it (`samft.weights.key_templates`), so a round trip is the identity.
Placeholders: `{i}` / `{n}` an index, `{p}` weight or bias, `{attn}` a vision attention
tensor, `{name}` a decoder attention, `{proj}` one of its projections, `{mlp}` a layer of
an MLP head (official `layers.0 .. layers.{d-1}` are transformers' `proj_in`,
`layers.0 .. layers.{d-3}`, `proj_out`). Tensors are passed through untouched (same
objects); only names change, with one exception:

* The prompt encoder's random-Fourier matrix (`pe_layer.positional_encoding_gaussian_matrix`)
  is one tensor in the official model and two tied ones in transformers'
  (`shared_image_embedding.positional_embedding` for the dense grid and
  `prompt_encoder.shared_embedding.positional_embedding` for points): official -> HF
  writes both (as transformers' own converter does); HF -> official takes either and
  refuses two that differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from samft.model.registry import SamHyperParams, get_hyper_params
from samft.model.sam import PIXEL_MEAN, PIXEL_STD
from samft.weights.files import CheckpointError
from samft.weights.key_templates import META, TRANSFORMERS, KeyTemplates
from samft.weights.shapes import infer_image_size, infer_variant

OFFICIAL_PE = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
HF_PE = "shared_image_embedding.positional_embedding"
HF_PE_TIED = "prompt_encoder.shared_embedding.positional_embedding"

KEY_MAP: tuple[tuple[str, str], ...] = (
    # image encoder <-> vision encoder
    ("image_encoder.pos_embed", "vision_encoder.pos_embed"),
    ("image_encoder.patch_embed.proj.{p}", "vision_encoder.patch_embed.projection.{p}"),
    ("image_encoder.blocks.{i}.norm{n}.{p}", "vision_encoder.layers.{i}.layer_norm{n}.{p}"),
    ("image_encoder.blocks.{i}.attn.{attn}", "vision_encoder.layers.{i}.attn.{attn}"),
    ("image_encoder.blocks.{i}.mlp.lin{n}.{p}", "vision_encoder.layers.{i}.mlp.lin{n}.{p}"),
    ("image_encoder.neck.0.weight", "vision_encoder.neck.conv1.weight"),
    ("image_encoder.neck.1.{p}", "vision_encoder.neck.layer_norm1.{p}"),
    ("image_encoder.neck.2.weight", "vision_encoder.neck.conv2.weight"),
    ("image_encoder.neck.3.{p}", "vision_encoder.neck.layer_norm2.{p}"),
    # prompt encoder
    (OFFICIAL_PE, HF_PE),  # and HF_PE_TIED, see the module docstring
    ("prompt_encoder.point_embeddings.{i}.weight", "prompt_encoder.point_embed.{i}.weight"),
    ("prompt_encoder.not_a_point_embed.weight", "prompt_encoder.not_a_point_embed.weight"),
    ("prompt_encoder.no_mask_embed.weight", "prompt_encoder.no_mask_embed.weight"),
    ("prompt_encoder.mask_downscaling.0.{p}", "prompt_encoder.mask_embed.conv1.{p}"),
    ("prompt_encoder.mask_downscaling.1.{p}", "prompt_encoder.mask_embed.layer_norm1.{p}"),
    ("prompt_encoder.mask_downscaling.3.{p}", "prompt_encoder.mask_embed.conv2.{p}"),
    ("prompt_encoder.mask_downscaling.4.{p}", "prompt_encoder.mask_embed.layer_norm2.{p}"),
    ("prompt_encoder.mask_downscaling.6.{p}", "prompt_encoder.mask_embed.conv3.{p}"),
    # mask decoder
    ("mask_decoder.iou_token.weight", "mask_decoder.iou_token.weight"),
    ("mask_decoder.mask_tokens.weight", "mask_decoder.mask_tokens.weight"),
    (
        "mask_decoder.transformer.layers.{i}.{name}.{proj}.{p}",
        "mask_decoder.transformer.layers.{i}.{name}.{proj}.{p}",
    ),
    (
        "mask_decoder.transformer.layers.{i}.norm{n}.{p}",
        "mask_decoder.transformer.layers.{i}.layer_norm{n}.{p}",
    ),
    (
        "mask_decoder.transformer.layers.{i}.mlp.lin{n}.{p}",
        "mask_decoder.transformer.layers.{i}.mlp.lin{n}.{p}",
    ),
    (
        "mask_decoder.transformer.final_attn_token_to_image.{proj}.{p}",
        "mask_decoder.transformer.final_attn_token_to_image.{proj}.{p}",
    ),
    (
        "mask_decoder.transformer.norm_final_attn.{p}",
        "mask_decoder.transformer.layer_norm_final_attn.{p}",
    ),
    ("mask_decoder.output_upscaling.0.{p}", "mask_decoder.upscale_conv1.{p}"),
    ("mask_decoder.output_upscaling.1.{p}", "mask_decoder.upscale_layer_norm.{p}"),
    ("mask_decoder.output_upscaling.3.{p}", "mask_decoder.upscale_conv2.{p}"),
    (
        "mask_decoder.output_hypernetworks_mlps.{i}.{mlp}.{p}",
        "mask_decoder.output_hypernetworks_mlps.{i}.{mlp}.{p}",
    ),
    ("mask_decoder.iou_prediction_head.{mlp}.{p}", "mask_decoder.iou_prediction_head.{mlp}.{p}"),
)

KEYS = KeyTemplates(
    KEY_MAP,
    groups={
        "attn": r"qkv\.weight|qkv\.bias|proj\.weight|proj\.bias|rel_pos_h|rel_pos_w",
        "name": r"self_attn|cross_attn_token_to_image|cross_attn_image_to_token",
        "proj": r"q_proj|k_proj|v_proj|out_proj",
    },
    layouts=("the official SAM", "transformers' SamModel"),
)


def official_to_transformers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official SAM keys (`image_encoder.*`, ...) -> transformers' `SamModel` keys."""
    out = KEYS.rename(state_dict, META)
    if HF_PE in out:
        out[HF_PE_TIED] = out[HF_PE]  # tied in SamModel; written apart by the caller
    return out


def transformers_to_official(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """transformers' `SamModel` keys -> official SAM keys. A CheckpointError lists keys
    that belong to neither layout."""
    state_dict = untie_positional_encoding(state_dict, HF_PE, HF_PE_TIED, "SAM")
    return KEYS.rename(state_dict, TRANSFORMERS)


def untie_positional_encoding(
    state_dict: Mapping[str, Tensor], key: str, tied: str, model: str
) -> dict[str, Tensor]:
    """`state_dict` without `tied`, the prompt encoder's copy of the random-Fourier matrix
    `key` (transformers keeps one for the image grid and one for points): `key` keeps
    either; two that differ are a CheckpointError."""
    state_dict = dict(state_dict)
    copy = state_dict.pop(tied, None)
    if copy is None:
        return state_dict
    if key not in state_dict:
        state_dict[key] = copy
    elif copy is not state_dict[key] and not torch.equal(copy, state_dict[key]):
        raise CheckpointError(
            f"'{tied}' differs from '{key}'; {model} has one positional-encoding matrix "
            "for points and the image grid"
        )
    return state_dict


def transformers_config(
    source: SamHyperParams | Mapping[str, Tensor],
    image_size: int | None = None,
    dtype: str = "float32",
) -> dict[str, Any]:
    """`config.json` of a `SamModel` with the architecture of `source` (hyper-parameters,
    or an official state dict whose variant and size are read from its shapes)."""
    if isinstance(source, Mapping):
        hp = get_hyper_params(infer_variant(source))
        image_size = image_size or infer_image_size(source)
    else:
        hp = source
    if getattr(hp, "encoder", "vit") != "vit" or getattr(hp, "normalization", "mean_std") != (
        "mean_std"
    ):
        raise CheckpointError(
            "transformers' SamModel has SAM's ViT image encoder and mean/std normalisation "
            f"only; this variant has {type(hp).__name__}"
        )
    size = int(image_size or hp.image_size)
    dim = hp.prompt_embed_dim
    return {
        "architectures": ["SamModel"],
        "model_type": "sam",
        "dtype": dtype,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "vision_config": {
            "model_type": "sam_vision_model",
            "hidden_size": hp.encoder_embed_dim,
            "num_hidden_layers": hp.encoder_depth,
            "num_attention_heads": hp.encoder_num_heads,
            "global_attn_indexes": list(hp.encoder_global_attn_indexes),
            "window_size": hp.window_size,
            "image_size": size,
            "patch_size": hp.patch_size,
            "num_channels": 3,
            "output_channels": dim,
            "mlp_ratio": hp.mlp_ratio,
            "mlp_dim": int(hp.encoder_embed_dim * hp.mlp_ratio),
            "num_pos_feats": dim // 2,  # the Fourier matrix is 2 x C/2
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-6,
            "qkv_bias": True,
            "use_abs_pos": True,
            "use_rel_pos": True,
            "attention_dropout": 0.0,
            "initializer_range": 1e-10,
        },
        "prompt_encoder_config": {
            "model_type": "sam_prompt_encoder",
            "hidden_size": dim,
            "image_size": size,
            "patch_size": hp.patch_size,
            "mask_input_channels": hp.mask_in_chans,
            "num_point_embeddings": 4,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-6,
        },
        "mask_decoder_config": {
            "model_type": "sam_mask_decoder",
            "hidden_size": dim,
            "num_hidden_layers": hp.decoder_depth,
            "num_attention_heads": hp.decoder_num_heads,
            "mlp_dim": hp.decoder_mlp_dim,
            "attention_downsample_rate": 2,
            "num_multimask_outputs": hp.num_multimask_outputs,
            "iou_head_depth": hp.iou_head_depth,
            "iou_head_hidden_dim": hp.iou_head_hidden_dim,
            "hidden_act": "relu",
            "layer_norm_eps": 1e-5,  # the official decoder's nn.LayerNorm default
        },
    }


def preprocessor_config(
    image_size: int,
    pixel_mean: Sequence[float] = PIXEL_MEAN,
    pixel_std: Sequence[float] = PIXEL_STD,
) -> dict[str, Any]:
    """`preprocessor_config.json` for `SamProcessor`: long side resized to `image_size`
    (bilinear), scaled to 0..1, normalised with `pixel_mean` / `pixel_std` (given in 0..255
    as samft's `Sam` holds them), padded bottom-right to `image_size` square."""
    low_res = image_size // 4
    return {
        "image_processor_type": "SamImageProcessor",
        "processor_class": "SamProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"longest_edge": image_size},
        "resample": 2,  # PIL.Image.BILINEAR
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [round(float(m) / 255, 10) for m in pixel_mean],
        "image_std": [round(float(s) / 255, 10) for s in pixel_std],
        "do_pad": True,
        "pad_size": {"height": image_size, "width": image_size},
        "mask_size": {"longest_edge": low_res},
        "mask_pad_size": {"height": low_res, "width": low_res},
    }

"""The one place where SAM variants are wired: hyper-parameters and `build_sam`.

Three encoder families; the first two share the prompt encoder and mask decoder:

* `SamHyperParams` (`encoder == "vit"`): SAM's ViT. `vit_b`, `vit_l` and `vit_h` carry the
  official hyper-parameters; `tiny` is ours, small enough to train from scratch on a CPU
  in tests and in the demo.
* `TinyViTHyperParams` (`encoder == "tiny_vit"`): `vit_t` is MobileSAM (1024 px, SAM's
  pixel mean/std); `lite_medsam` is LiteMedSAM (256 px, 1x1 stem, per-image min-max
  scaling, decoder as SAM's).
* `Sam2HyperParams` (`encoder == "hiera"`): SAM 2's image model (`samft.model.sam2.Sam2`:
  Hiera + FPN, SAM's prompt encoder, SAM 2's mask decoder; square resize, ImageNet
  statistics). `sam2.1_hiera_t|s|b+|l` carry Meta's SAM 2.1 hyper-parameters; SAM 2.0's
  `sam2_hiera_*` have the same image model (2.0 and 2.1 differ only in the video parts,
  which `Sam2` carries unchanged: 2.1 adds `no_obj_embed_spatial` and
  `obj_ptr_tpos_proj`). `sam2_tiny` is ours, small enough for tests on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import lcm, prod
from typing import ClassVar

from torch import nn

from samft.model.image_encoder import ImageEncoderViT
from samft.model.mask_decoder import MaskDecoder
from samft.model.prompt_encoder import PromptEncoder
from samft.model.sam import PIXEL_MEAN, PIXEL_STD, Sam
from samft.model.sam2.hiera import Hiera
from samft.model.sam2.image_encoder import FpnNeck, Sam2ImageEncoder
from samft.model.sam2.mask_decoder import Sam2MaskDecoder, two_way_transformer
from samft.model.sam2.model import Sam2
from samft.model.tiny_vit import STEMS, TinyViT
from samft.model.transformer import TwoWayTransformer


@dataclass(frozen=True, kw_only=True)
class _SharedHyperParams:
    """The input size, preprocessing, prompt encoder and mask decoder of any variant."""

    image_size: int = 1024
    normalization: str = "mean_std"  # `Sam.preprocess`: "mean_std" or "min_max"
    resize_interpolation: str = "bilinear"  # image filter to the input frame: or "area"
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3


@dataclass(frozen=True)
class SamHyperParams(_SharedHyperParams):
    """Everything that fixes a SAM architecture with a ViT encoder (and so its shapes)."""

    encoder: ClassVar[str] = "vit"

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    patch_size: int = 16
    mlp_ratio: float = 4.0

    @property
    def embedding_stride(self) -> int:
        """Input pixels per image-embedding cell."""
        return self.patch_size


@dataclass(frozen=True)
class TinyViTHyperParams(_SharedHyperParams):
    """Everything that fixes a SAM architecture with a TinyViT encoder (see `TinyViT`)."""

    encoder: ClassVar[str] = "tiny_vit"

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_sizes: tuple[int, ...]
    stem: str = "conv3x3_s2"
    merge_strides: tuple[int, ...] = (2, 2, 1)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    with_head: bool = False  # MobileSAM's unused ImageNet classifier, for strict loading

    @property
    def embedding_stride(self) -> int:
        """Input pixels per image-embedding cell."""
        return STEMS[self.stem][1] ** 2 * prod(self.merge_strides)


@dataclass(frozen=True, kw_only=True)
class Sam2HyperParams(_SharedHyperParams):
    """Everything that fixes a SAM 2 image model (see `Hiera`, `FpnNeck`, `Sam2MaskDecoder`).

    `prompt_embed_dim` is also the FPN width (`d_model`); the decoder fields keep SAM's
    values, which SAM 2 hard-codes.
    """

    encoder: ClassVar[str] = "hiera"

    normalization: str = "imagenet"  # [0, 1] pixels, ImageNet mean/std (`Sam2.preprocess`)
    resize_interpolation: str = "bilinear_antialias"  # to the S x S square, aspect not kept
    embed_dim: int
    num_heads: int
    stages: tuple[int, ...]
    global_att_blocks: tuple[int, ...]
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    q_pool: int = 3
    drop_path_rate: float = 0.0  # Hiera's stochastic depth in training (Meta fine-tunes at 0.1)
    pred_obj_scores_mlp: bool = True
    dynamic_multimask_via_stability: bool = True  # Meta's build_sam2 default

    @property
    def embedding_stride(self) -> int:
        """Input pixels per image-embedding cell (the S/16 level the decoder attends to)."""
        return 16

    @property
    def size_multiple(self) -> int:
        """The input side must divide into whole stage-1 windows and whole pooled grids."""
        return 4 * lcm(self.window_spec[0], 2**self.q_pool)


VariantHyperParams = SamHyperParams | TinyViTHyperParams | Sam2HyperParams

# TinyViT-5M as MobileSAM and LiteMedSAM use it.
_TINY_VIT_5M = {
    "embed_dims": (64, 128, 160, 320),
    "depths": (2, 2, 6, 2),
    "num_heads": (2, 4, 5, 10),
    "window_sizes": (7, 7, 14, 7),
}

VARIANTS: dict[str, VariantHyperParams] = {
    "vit_b": SamHyperParams(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamHyperParams(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamHyperParams(1280, 32, 16, (7, 15, 23, 31)),
    "tiny": SamHyperParams(
        encoder_embed_dim=96,
        encoder_depth=4,
        encoder_num_heads=3,
        encoder_global_attn_indexes=(1, 3),
        window_size=8,
        prompt_embed_dim=128,
        decoder_depth=2,
        decoder_mlp_dim=512,
        decoder_num_heads=8,
        iou_head_hidden_dim=128,
        image_size=256,
    ),
    "vit_t": TinyViTHyperParams(**_TINY_VIT_5M, stem="conv3x3_s2", with_head=True),
    "lite_medsam": TinyViTHyperParams(
        **_TINY_VIT_5M,
        stem="conv1x1",
        image_size=256,
        normalization="min_max",
        resize_interpolation="area",
    ),
    **{
        f"sam2{version}_hiera_{size}": hp
        for version in ("", ".1")
        for size, hp in {
            "t": Sam2HyperParams(
                embed_dim=96,
                num_heads=1,
                stages=(1, 2, 7, 2),
                global_att_blocks=(5, 7, 9),
                window_pos_embed_bkg_spatial_size=(7, 7),
            ),
            "s": Sam2HyperParams(
                embed_dim=96,
                num_heads=1,
                stages=(1, 2, 11, 2),
                global_att_blocks=(7, 10, 13),
                window_pos_embed_bkg_spatial_size=(7, 7),
            ),
            "b+": Sam2HyperParams(
                embed_dim=112,
                num_heads=2,
                stages=(2, 3, 16, 3),
                global_att_blocks=(12, 16, 20),
            ),
            "l": Sam2HyperParams(
                embed_dim=144,
                num_heads=2,
                stages=(2, 6, 36, 4),
                global_att_blocks=(23, 33, 43),
                window_spec=(8, 4, 16, 8),
                window_pos_embed_bkg_spatial_size=(7, 7),
            ),
        }.items()
    },
    "sam2_tiny": Sam2HyperParams(
        embed_dim=16,
        num_heads=2,
        stages=(1, 1, 2, 1),
        global_att_blocks=(3,),
        window_spec=(8, 4, 4, 4),
        window_pos_embed_bkg_spatial_size=(4, 4),
        prompt_embed_dim=64,
        image_size=256,
    ),
}


def get_hyper_params(variant: str) -> VariantHyperParams:
    """The hyper-parameters of `variant`, or a ValueError listing the known ones."""
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(
            f"unknown SAM variant '{variant}'; expected one of {sorted(VARIANTS)}"
        ) from None


def _check_image_size(variant: str, image_size: int, multiple: int, what: str) -> None:
    if image_size <= 0 or image_size % multiple:
        raise ValueError(
            f"image_size for '{variant}' must be a positive multiple of {what}{multiple}, "
            f"got {image_size}"
        )


def build_image_encoder(
    hp: VariantHyperParams, image_size: int, activation_checkpointing: bool = False
) -> nn.Module:
    """The image encoder of `hp` for `image_size` px inputs (random weights)."""
    if isinstance(hp, TinyViTHyperParams):
        return TinyViT(
            img_size=image_size,
            embed_dims=hp.embed_dims,
            depths=hp.depths,
            num_heads=hp.num_heads,
            window_sizes=hp.window_sizes,
            mlp_ratio=hp.mlp_ratio,
            mbconv_expand_ratio=hp.mbconv_expand_ratio,
            local_conv_size=hp.local_conv_size,
            stem=hp.stem,
            merge_strides=hp.merge_strides,
            out_chans=hp.prompt_embed_dim,
            with_head=hp.with_head,
            activation_checkpointing=activation_checkpointing,
        )
    return ImageEncoderViT(
        img_size=image_size,
        patch_size=hp.patch_size,
        embed_dim=hp.encoder_embed_dim,
        depth=hp.encoder_depth,
        num_heads=hp.encoder_num_heads,
        mlp_ratio=hp.mlp_ratio,
        out_chans=hp.prompt_embed_dim,
        qkv_bias=True,
        norm_eps=1e-6,
        window_size=hp.window_size,
        global_attn_indexes=hp.encoder_global_attn_indexes,
        activation_checkpointing=activation_checkpointing,
    )


def build_sam(
    variant: str,
    image_size: int | None = None,
    activation_checkpointing: bool = False,
) -> Sam | Sam2:
    """Build a randomly initialised SAM (a `Sam2` for the hiera variants) of `variant`, in
    eval mode.

    `image_size` None means the variant's default (1024 for vit_*, vit_t and sam2*_hiera_*,
    256 for tiny, lite_medsam and sam2_tiny). This only builds; `samft.weights.load_sam`
    builds and loads a checkpoint.
    """
    hp = get_hyper_params(variant)
    size = hp.image_size if image_size is None else int(image_size)
    if isinstance(hp, Sam2HyperParams):
        _check_image_size(variant, size, hp.size_multiple, "")
        return build_sam2_model(hp, size, activation_checkpointing)
    _check_image_size(variant, size, hp.embedding_stride, "the patch size ")
    grid = size // hp.embedding_stride
    image_encoder = build_image_encoder(hp, size, activation_checkpointing)
    prompt_encoder = PromptEncoder(
        embed_dim=hp.prompt_embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(size, size),
        mask_in_chans=hp.mask_in_chans,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=hp.prompt_embed_dim,
        transformer=TwoWayTransformer(
            depth=hp.decoder_depth,
            embedding_dim=hp.prompt_embed_dim,
            num_heads=hp.decoder_num_heads,
            mlp_dim=hp.decoder_mlp_dim,
        ),
        num_multimask_outputs=hp.num_multimask_outputs,
        iou_head_depth=hp.iou_head_depth,
        iou_head_hidden_dim=hp.iou_head_hidden_dim,
    )
    sam = Sam(
        image_encoder,
        prompt_encoder,
        mask_decoder,
        PIXEL_MEAN,
        PIXEL_STD,
        normalization=hp.normalization,
        resize_interpolation=hp.resize_interpolation,
    )
    sam.eval()
    return sam


def build_sam2_model(
    hp: Sam2HyperParams, image_size: int, activation_checkpointing: bool = False
) -> Sam2:
    """The SAM 2 image model of `hp` for `image_size` px inputs (random weights, eval mode)."""
    trunk = Hiera(
        embed_dim=hp.embed_dim,
        num_heads=hp.num_heads,
        stages=hp.stages,
        global_att_blocks=hp.global_att_blocks,
        window_spec=hp.window_spec,
        window_pos_embed_bkg_spatial_size=hp.window_pos_embed_bkg_spatial_size,
        q_pool=hp.q_pool,
        drop_path_rate=hp.drop_path_rate,
        activation_checkpointing=activation_checkpointing,
    )
    neck = FpnNeck(
        d_model=hp.prompt_embed_dim,
        backbone_channel_list=trunk.channel_list,
        fpn_top_down_levels=hp.fpn_top_down_levels,
    )
    grid = image_size // hp.embedding_stride
    prompt_encoder = PromptEncoder(
        embed_dim=hp.prompt_embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(image_size, image_size),
        mask_in_chans=hp.mask_in_chans,
    )
    mask_decoder = Sam2MaskDecoder(
        transformer_dim=hp.prompt_embed_dim,
        transformer=two_way_transformer(
            hp.decoder_depth, hp.prompt_embed_dim, hp.decoder_num_heads, hp.decoder_mlp_dim
        ),
        num_multimask_outputs=hp.num_multimask_outputs,
        iou_head_depth=hp.iou_head_depth,
        iou_head_hidden_dim=hp.iou_head_hidden_dim,
        pred_obj_scores_mlp=hp.pred_obj_scores_mlp,
        dynamic_multimask_via_stability=hp.dynamic_multimask_via_stability,
    )
    sam2 = Sam2(Sam2ImageEncoder(trunk, neck), prompt_encoder, mask_decoder, image_size)
    sam2.eval()
    return sam2

"""The one place where SAM variants are wired: hyper-parameters and `build_sam`.

`vit_b`, `vit_l` and `vit_h` carry the official hyper-parameters; `tiny` is ours, small
enough to train from scratch on a CPU in tests and in the demo.
"""

from __future__ import annotations

from dataclasses import dataclass

from samft.model.image_encoder import ImageEncoderViT
from samft.model.mask_decoder import MaskDecoder
from samft.model.prompt_encoder import PromptEncoder
from samft.model.sam import PIXEL_MEAN, PIXEL_STD, Sam
from samft.model.transformer import TwoWayTransformer


@dataclass(frozen=True)
class SamHyperParams:
    """Everything that fixes a SAM architecture (and so its state-dict shapes)."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    image_size: int = 1024
    patch_size: int = 16
    mask_in_chans: int = 16
    mlp_ratio: float = 4.0
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3


VARIANTS: dict[str, SamHyperParams] = {
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
}


def get_hyper_params(variant: str) -> SamHyperParams:
    """The hyper-parameters of `variant`, or a ValueError listing the known ones."""
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(
            f"unknown SAM variant '{variant}'; expected one of {sorted(VARIANTS)}"
        ) from None


def _check_image_size(variant: str, image_size: int, patch_size: int) -> None:
    if image_size <= 0 or image_size % patch_size:
        raise ValueError(
            f"image_size for '{variant}' must be a positive multiple of the patch size "
            f"{patch_size}, got {image_size}"
        )


def build_sam(
    variant: str,
    image_size: int | None = None,
    activation_checkpointing: bool = False,
) -> Sam:
    """Build a randomly initialised SAM of `variant`, in eval mode.

    `image_size` None means the variant's default (1024 for vit_*, 256 for tiny). This
    only builds; `samft.weights.load_sam` builds and loads a checkpoint.
    """
    hp = get_hyper_params(variant)
    size = hp.image_size if image_size is None else int(image_size)
    _check_image_size(variant, size, hp.patch_size)
    grid = size // hp.patch_size
    image_encoder = ImageEncoderViT(
        img_size=size,
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
    sam = Sam(image_encoder, prompt_encoder, mask_decoder, PIXEL_MEAN, PIXEL_STD)
    sam.eval()
    return sam

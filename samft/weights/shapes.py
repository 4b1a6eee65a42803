"""What a state dict holds, from its tensor shapes alone: the variant and the input size,
and how to move weights saved at one input size to another. SAM 2's own reading is in
`samft.weights.sam2_layout`; `infer_variant` and `infer_image_size` take both."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch.nn.functional as F
from torch import Tensor

from samft.model.image_encoder import resize_rel_pos
from samft.model.registry import VARIANTS, get_hyper_params
from samft.weights.files import CheckpointError
from samft.weights.sam2_layout import infer_sam2_variant, is_sam2_state_dict, sam2_default_size

POS_EMBED = "image_encoder.pos_embed"
PATCH_WEIGHT = "image_encoder.patch_embed.proj.weight"
# TinyViT (MobileSAM, LiteMedSAM): its first MBConv block, and its stem's first conv, whose
# kernel tells the families apart (3 x 3 stride 2: MobileSAM; 1 x 1 stride 1: LiteMedSAM)
TINY_VIT_BLOCK = "image_encoder.layers.0.blocks.0.conv1.c.weight"
TINY_VIT_STEM = "image_encoder.patch_embed.seq.0.c.weight"
TINY_VIT_BY_STEM_KERNEL = {3: "vit_t", 1: "lite_medsam"}
TINY_VIT_HEAD_KEYS = (
    "image_encoder.norm_head.weight",
    "image_encoder.norm_head.bias",
    "image_encoder.head.weight",
    "image_encoder.head.bias",
)


def _describe(state_dict: Mapping[str, Tensor]) -> dict[str, int]:
    """Architecture numbers readable from tensor shapes alone."""
    try:
        patch = state_dict[PATCH_WEIGHT]
        head_dim = state_dict["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
        return {
            "encoder_embed_dim": patch.shape[0],
            "patch_size": patch.shape[-1],
            "encoder_depth": _count_indexed(state_dict, "image_encoder.blocks."),
            "encoder_num_heads": patch.shape[0] // head_dim,
            "prompt_embed_dim": state_dict["mask_decoder.iou_token.weight"].shape[1],
            "decoder_depth": _count_indexed(state_dict, "mask_decoder.transformer.layers."),
            "decoder_mlp_dim": state_dict[
                "mask_decoder.transformer.layers.0.mlp.lin1.weight"
            ].shape[0],
            "iou_head_hidden_dim": state_dict[
                "mask_decoder.iou_prediction_head.layers.0.weight"
            ].shape[0],
        }
    except KeyError as err:
        raise CheckpointError(f"not a SAM state dict: it has no key {err}") from None


def _count_indexed(state_dict: Iterable[str], prefix: str) -> int:
    return len({k[len(prefix) :].split(".", 1)[0] for k in state_dict if k.startswith(prefix)})


def infer_variant(state_dict: Mapping[str, Tensor]) -> str:
    """The registry variant whose architecture has these tensor shapes."""
    if is_sam2_state_dict(state_dict):
        return infer_sam2_variant(state_dict)
    if TINY_VIT_BLOCK in state_dict:
        return _infer_tiny_vit(state_dict)
    found = _describe(state_dict)
    for name, hp in VARIANTS.items():
        if hp.encoder == "vit" and all(getattr(hp, f) == value for f, value in found.items()):
            return name
    raise CheckpointError(
        f"state dict matches no known SAM variant: it has {found}; known variants are "
        f"{sorted(VARIANTS)}"
    )


def _infer_tiny_vit(state_dict: Mapping[str, Tensor]) -> str:
    """`vit_t` or `lite_medsam`, from the stem's kernel size."""
    stem = state_dict.get(TINY_VIT_STEM)
    name = TINY_VIT_BY_STEM_KERNEL.get(int(stem.shape[-1])) if stem is not None else None
    if name is None:
        shape = None if stem is None else tuple(stem.shape)
        raise CheckpointError(
            f"state dict has a TinyViT encoder but its stem {TINY_VIT_STEM} has shape {shape}; "
            "expected a 3 x 3 (MobileSAM, vit_t) or 1 x 1 (LiteMedSAM, lite_medsam) kernel"
        )
    return name


def infer_image_size(state_dict: Mapping[str, Tensor]) -> int:
    """The input size S the weights were saved for: from the position-embedding grid of a
    ViT; a TinyViT or a Hiera has none (it works at any multiple of its stride), so its
    variant's."""
    if is_sam2_state_dict(state_dict):
        return sam2_default_size(infer_sam2_variant(state_dict))
    if TINY_VIT_BLOCK in state_dict:
        return get_hyper_params(_infer_tiny_vit(state_dict)).image_size
    try:
        return state_dict[POS_EMBED].shape[1] * state_dict[PATCH_WEIGHT].shape[-1]
    except KeyError as err:
        raise CheckpointError(f"not a SAM state dict: it has no key {err}") from None


def resize_position_embeddings(
    state_dict: Mapping[str, Tensor],
    image_size: int,
    global_attn_indexes: Iterable[int] | None = None,
) -> dict[str, Tensor]:
    """Adapt weights saved at one input size to another (e.g. 1024 -> 512 px).

    The absolute position embedding (`1 x g x g x C`) is resampled bicubically (with
    antialiasing when shrinking) to the new grid. The relative-position tables of the
    global-attention blocks span the whole grid (`2g - 1` rows) and are resampled
    linearly; windowed blocks keep theirs. `global_attn_indexes` None means the
    variant's own, inferred from the shapes.
    """
    out = dict(state_dict)
    old_grid = state_dict[POS_EMBED].shape[1]
    patch = state_dict[PATCH_WEIGHT].shape[-1]
    if image_size % patch:
        raise ValueError(f"image_size {image_size} is not a multiple of the patch size {patch}")
    grid = image_size // patch
    if grid == old_grid:
        return out
    if global_attn_indexes is None:
        global_attn_indexes = get_hyper_params(
            infer_variant(state_dict)
        ).encoder_global_attn_indexes

    pos = state_dict[POS_EMBED]
    resized = F.interpolate(
        pos.permute(0, 3, 1, 2).float(),
        size=(grid, grid),
        mode="bicubic",
        align_corners=False,
        antialias=grid < old_grid,
    )
    out[POS_EMBED] = resized.permute(0, 2, 3, 1).to(pos.dtype).contiguous()
    for index in global_attn_indexes:
        for axis in ("h", "w"):
            key = f"image_encoder.blocks.{index}.attn.rel_pos_{axis}"
            if state_dict[key].shape[0] != 2 * old_grid - 1:
                raise ValueError(
                    f"{key} has {state_dict[key].shape[0]} rows; a global block of a "
                    f"{old_grid} x {old_grid} grid needs {2 * old_grid - 1}"
                )
            out[key] = resize_rel_pos(state_dict[key], 2 * grid - 1).contiguous()
    return out

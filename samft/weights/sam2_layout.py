"""Meta's SAM 2 checkpoint layout: recognise it and read its variant from its tensors.

Meta ships SAM 2 as `{"model": state_dict}` (`sam2.1_hiera_tiny.pt`, ...). The state dict
is the whole video model: the image model that samft runs (`image_encoder.trunk.*` Hiera,
`image_encoder.neck.*` FPN, `sam_prompt_encoder.*`, `sam_mask_decoder.*`, `no_mem_embed`)
and the video parts it carries unchanged (`samft.model.sam2.carried.VIDEO_PARTS`).

The variant is read from shapes: Hiera's width (`patch_embed`), its stages (the blocks
that change width, `blocks.<i>.proj`, open stages 2..4), its window and background
position embeddings and the decoder's width single out one image model (t, s, b+, l or
samft's `sam2_tiny`). SAM 2.0 and 2.1 share their image models and differ in the video
parts: 2.1 adds `no_obj_embed_spatial` and `obj_ptr_tpos_proj`. A file without video
parts (an image model never loaded from Meta's file) is taken as 2.1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor

from samft.model.registry import VARIANTS, Sam2HyperParams, get_hyper_params
from samft.model.sam2.carried import VIDEO_PARTS, is_video_part
from samft.weights.files import CheckpointError

PATCH_WEIGHT = "image_encoder.trunk.patch_embed.proj.weight"
POS_EMBED = "image_encoder.trunk.pos_embed"
POS_EMBED_WINDOW = "image_encoder.trunk.pos_embed_window"
DECODER_TOKEN = "sam_mask_decoder.iou_token.weight"
BLOCKS = "image_encoder.trunk.blocks."
# The top-level names (before the first ".") of the image model's tensors.
IMAGE_PARTS = frozenset({"image_encoder", "sam_prompt_encoder", "sam_mask_decoder", "no_mem_embed"})
# Video parts every released config has; the others depend on the config (2.0 or 2.1).
CORE_VIDEO_PARTS = ("memory_attention", "memory_encoder", "maskmem_tpos_enc", "no_mem_pos_enc")
SAM2_1_VIDEO_PARTS = ("no_obj_embed_spatial", "obj_ptr_tpos_proj")
# Meta's config file (inside the `sam2` package) of each released variant.
META_CONFIGS = {
    f"{version}_hiera_{size}": f"configs/{version}/{version}_hiera_{size}.yaml"
    for version in ("sam2", "sam2.1")
    for size in ("t", "s", "b+", "l")
}


def is_sam2_key(key: str) -> bool:
    """Whether a state-dict key (without wrapper prefixes) names a tensor of SAM 2's
    image model or video parts."""
    top = key.split(".", 1)[0]
    return top in IMAGE_PARTS or top in VIDEO_PARTS


def is_sam2_state_dict(state_dict: Iterable[str]) -> bool:
    """Whether the keys are a SAM 2 model's (Hiera trunk), not a SAM's."""
    return PATCH_WEIGHT in state_dict


def _top_levels(state_dict: Iterable[str]) -> set[str]:
    return {key.split(".", 1)[0] for key in state_dict}


def sam2_version(state_dict: Mapping[str, Tensor]) -> str:
    """The SAM 2 release, `sam2.1` or `sam2` (2.0), from the video parts; `sam2.1` for a
    file without any."""
    tops = _top_levels(state_dict)
    if not tops & VIDEO_PARTS:
        return "sam2.1"
    return "sam2.1" if tops & set(SAM2_1_VIDEO_PARTS) else "sam2"


def video_keys(state_dict: Iterable[str]) -> list[str]:
    """The keys of the video parts, in order."""
    return [key for key in state_dict if is_video_part(key)]


def check_video_parts(state_dict: Mapping[str, Tensor], source: str) -> None:
    """A file with video parts must have all of a video model's core parts (else Meta's
    `build_sam2` refuses the export later): a CheckpointError naming what is missing."""
    tops = _top_levels(state_dict)
    if not tops & VIDEO_PARTS:
        return
    missing = [name for name in CORE_VIDEO_PARTS if name not in tops]
    if missing:
        raise CheckpointError(
            f"checkpoint {source} holds part of a SAM 2 video model "
            f"({', '.join(sorted(tops & VIDEO_PARTS))}) but not {', '.join(missing)}; "
            "expected all of Meta's video parts (memory attention, memory encoder, ...) "
            "or none"
        )


def _stages(state_dict: Mapping[str, Tensor]) -> tuple[int, ...]:
    """Blocks per stage: a block with its own `proj` (a width change) opens a stage."""
    indexes = {
        int(key[len(BLOCKS) :].split(".", 1)[0]) for key in state_dict if key.startswith(BLOCKS)
    }
    opens = sorted(i for i in indexes if f"{BLOCKS}{i}.proj.weight" in state_dict)
    bounds = [0, *opens, len(indexes)]
    return tuple(b - a for a, b in zip(bounds, bounds[1:], strict=False))


def describe_sam2(state_dict: Mapping[str, Tensor]) -> dict[str, object]:
    """The SAM 2 architecture numbers readable from tensor shapes alone."""
    try:
        return {
            "embed_dim": state_dict[PATCH_WEIGHT].shape[0],
            "stages": _stages(state_dict),
            "window": state_dict[POS_EMBED_WINDOW].shape[-1],
            "background": tuple(state_dict[POS_EMBED].shape[-2:]),
            "prompt_embed_dim": state_dict[DECODER_TOKEN].shape[1],
        }
    except KeyError as err:
        raise CheckpointError(f"not a SAM 2 state dict: it has no key {err}") from None


def _fits(hp: Sam2HyperParams, found: Mapping[str, object]) -> bool:
    return (
        hp.embed_dim == found["embed_dim"]
        and hp.stages == found["stages"]
        and hp.window_spec[0] == found["window"]
        and hp.window_pos_embed_bkg_spatial_size == found["background"]
        and hp.prompt_embed_dim == found["prompt_embed_dim"]
    )


def infer_sam2_variant(state_dict: Mapping[str, Tensor]) -> str:
    """The registry variant (`sam2.1_hiera_t`, `sam2_hiera_l`, `sam2_tiny`, ...) of a SAM 2
    state dict: the image model from its shapes, 2.0 or 2.1 from its video parts."""
    found = describe_sam2(state_dict)
    names = [
        name
        for name, hp in VARIANTS.items()
        if isinstance(hp, Sam2HyperParams) and _fits(hp, found)
    ]
    if not names:
        known = sorted(n for n, hp in VARIANTS.items() if isinstance(hp, Sam2HyperParams))
        raise CheckpointError(
            f"SAM 2 state dict matches no known variant: its trunk has width "
            f"{found['embed_dim']}, stages {found['stages']}, window {found['window']}, "
            f"background {found['background']}, decoder width {found['prompt_embed_dim']}; "
            f"known SAM 2 variants are {known}"
        )
    if len(names) == 1:
        return names[0]
    version = sam2_version(state_dict)
    return next(name for name in names if name.startswith(f"{version}_hiera_"))


def sam2_default_size(variant: str) -> int:
    """The input side a SAM 2 variant was trained at (Hiera's weights fit any multiple)."""
    return get_hyper_params(variant).image_size

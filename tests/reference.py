"""The reference implementations, for parity tests and benchmarks only.

samft never imports these packages; tests and `scripts/` do, through this module:
`import_segment_anything()` gives Meta's package with a small torchvision stand-in, and
`build_official` builds any registry variant with Meta's classes.
Scripts reach this file with `sys.path.insert(0, <repo>/tests)`.
"""

from __future__ import annotations

import sys
import types
from functools import partial
from typing import Any

import numpy as np
from PIL import Image
from torch import nn

from samft.model.registry import get_hyper_params
from samft.model.sam import PIXEL_MEAN, PIXEL_STD

TORCHVISION_MODULES = (
    "torchvision",
    "torchvision.transforms",
    "torchvision.transforms.functional",
    "torchvision.ops",
    "torchvision.ops.boxes",
)


def _install_torchvision_stand_in() -> bool:
    """Give `segment_anything` the torchvision functions it imports; True if installed.

    PyPI's torchvision does not import beside the CPU build of torch used here, and the
    official package imports it at import time. Its model code never calls torchvision;
    its ResizeLongestSide calls `resize(to_pil_image(image), size)`, which for PIL images
    torchvision implements as a PIL bilinear resize. The stand-in does exactly that.
    `batched_nms` is filled in by the tests that run Meta's automatic mask generator.
    """
    try:
        import torchvision.transforms.functional  # noqa: F401

        return False
    except Exception:
        pass

    def to_pil_image(image):
        return Image.fromarray(np.asarray(image))

    def resize(image, size, *args, **kwargs):
        h, w = size
        return image.resize((w, h), Image.BILINEAR)

    modules = {name: types.ModuleType(name) for name in TORCHVISION_MODULES}
    modules["torchvision.transforms.functional"].resize = resize
    modules["torchvision.transforms.functional"].to_pil_image = to_pil_image
    modules["torchvision.ops.boxes"].batched_nms = None
    modules["torchvision.ops.boxes"].box_area = None
    modules["torchvision"].transforms = modules["torchvision.transforms"]
    modules["torchvision"].ops = modules["torchvision.ops"]
    modules["torchvision.transforms"].functional = modules["torchvision.transforms.functional"]
    modules["torchvision.ops"].boxes = modules["torchvision.ops.boxes"]
    sys.modules.update(modules)
    return True


def import_segment_anything() -> Any:
    """Meta's `segment_anything`, imported with the torchvision stand-in where needed.

    Once imported, the stand-in leaves `sys.modules` again, so that lightning and
    torchmetrics never mistake it for torchvision.
    """
    installed = _install_torchvision_stand_in()
    import segment_anything
    import segment_anything.automatic_mask_generator  # noqa: F401
    import segment_anything.utils.amg  # noqa: F401

    if installed:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    return segment_anything


def official_kwargs(variant: str, image_size: int | None = None) -> dict[str, dict[str, Any]]:
    """Constructor arguments for the official `segment_anything.modeling` classes.

    `ImageEncoderViT(**kw["image_encoder"])`, `PromptEncoder(**kw["prompt_encoder"])`,
    `MaskDecoder(transformer=TwoWayTransformer(**kw["transformer"]), **kw["mask_decoder"])`
    and `Sam(..., **kw["sam"])` build the same architecture as `build_sam(variant)`.
    """
    hp = get_hyper_params(variant)
    size = hp.image_size if image_size is None else int(image_size)
    grid = size // hp.patch_size
    return {
        "image_encoder": {
            "img_size": size,
            "patch_size": hp.patch_size,
            "embed_dim": hp.encoder_embed_dim,
            "depth": hp.encoder_depth,
            "num_heads": hp.encoder_num_heads,
            "mlp_ratio": hp.mlp_ratio,
            "out_chans": hp.prompt_embed_dim,
            "qkv_bias": True,
            "norm_layer": partial(nn.LayerNorm, eps=1e-6),
            "use_rel_pos": True,
            "window_size": hp.window_size,
            "global_attn_indexes": list(hp.encoder_global_attn_indexes),
        },
        "prompt_encoder": {
            "embed_dim": hp.prompt_embed_dim,
            "image_embedding_size": (grid, grid),
            "input_image_size": (size, size),
            "mask_in_chans": hp.mask_in_chans,
        },
        "transformer": {
            "depth": hp.decoder_depth,
            "embedding_dim": hp.prompt_embed_dim,
            "mlp_dim": hp.decoder_mlp_dim,
            "num_heads": hp.decoder_num_heads,
        },
        "mask_decoder": {
            "num_multimask_outputs": hp.num_multimask_outputs,
            "transformer_dim": hp.prompt_embed_dim,
            "iou_head_depth": hp.iou_head_depth,
            "iou_head_hidden_dim": hp.iou_head_hidden_dim,
        },
        "sam": {"pixel_mean": list(PIXEL_MEAN), "pixel_std": list(PIXEL_STD)},
    }


def build_official(modeling: Any, variant: str, image_size: int | None = None) -> nn.Module:
    """The same architecture built with Meta's classes (`modeling` is
    `segment_anything.modeling`), in eval mode."""
    kw = official_kwargs(variant, image_size)
    sam = modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(**kw["image_encoder"]),
        prompt_encoder=modeling.PromptEncoder(**kw["prompt_encoder"]),
        mask_decoder=modeling.MaskDecoder(
            transformer=modeling.TwoWayTransformer(**kw["transformer"]), **kw["mask_decoder"]
        ),
        **kw["sam"],
    )
    return sam.eval()

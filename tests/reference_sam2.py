"""Meta's `sam2` package as a reference, for parity tests only (samft never imports it).

`import_sam2()` imports it with a small torchvision stand-in and leaves Hydra's global
state as it found it; `sam2_hydra()` is the context in which Meta's config-name builders
(`build_sam2`, `build_sam2_video_predictor`) may run; `tiny_config()` is a small
Meta-compatible model config (image size 256) with the architecture of samft's
`sam2_tiny`, video parts included, for `hydra.utils.instantiate`.

The package is PyPI's `rf-sam-2` (Meta's code, importable as `sam2`; PyPI's `sam2` is
another project). It requires torchvision, which does not import beside the CPU torch
used here, so it is installed without its dependencies:
`pip install --no-deps rf-sam-2==1.0.3` (plus `iopath`, in the dev extra).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samft.infer.mask_ops import batched_nms

TORCHVISION_MODULES = (
    "torchvision",
    "torchvision.transforms",
    "torchvision.ops",
    "torchvision.ops.boxes",
)
INSTALL_HINT = (
    "Meta's sam2 reference is not installed: pip install --no-deps rf-sam-2==1.0.3 iopath "
    "(not PyPI's 'sam2', and not with its dependencies: they pull in torchvision)"
)


class ToTensor:
    """torchvision's `ToTensor` for what the predictor passes: an `H x W x 3` array (or a
    PIL image) -> `3 x H x W` float, divided by 255 when it is uint8."""

    def __call__(self, picture: Any) -> Tensor:
        array = np.asarray(picture)
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        if tensor.dtype == torch.uint8:
            return tensor.to(torch.get_default_dtype()).div(255)
        return tensor


class Resize(nn.Module):
    """torchvision's `Resize` on a float tensor: bilinear with antialiasing."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = [int(size[0]), int(size[1])]

    def forward(self, x: Tensor) -> Tensor:
        out = F.interpolate(
            x[None], size=self.size, mode="bilinear", align_corners=False, antialias=True
        )
        return out[0]


class Normalize(nn.Module):
    """torchvision's `Normalize`: `(x - mean) / std` per channel."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def forward(self, x: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)
        return (x - mean[:, None, None]) / std[:, None, None]


def box_area(boxes: Tensor) -> Tensor:
    """`N x 4` (x0, y0, x1, y1) -> `N` areas."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _install_torchvision_stand_in() -> bool:
    """Put the stand-in in `sys.modules`; True if installed (False: torchvision imports)."""
    try:
        import torchvision.transforms  # noqa: F401

        return False
    except Exception:
        pass
    modules = {name: types.ModuleType(name) for name in TORCHVISION_MODULES}
    transforms = modules["torchvision.transforms"]
    transforms.ToTensor, transforms.Resize, transforms.Normalize = ToTensor, Resize, Normalize
    modules["torchvision.ops.boxes"].batched_nms = batched_nms
    modules["torchvision.ops.boxes"].box_area = box_area
    modules["torchvision"].transforms = transforms
    modules["torchvision"].ops = modules["torchvision.ops"]
    modules["torchvision.ops"].boxes = modules["torchvision.ops.boxes"]
    sys.modules.update(modules)
    return True


def import_sam2() -> Any:
    """Meta's `sam2`, its builders, predictors and modeling modules imported.

    `import sam2` initialises Hydra's global state for its own configs when nothing else
    has; that state is cleared again here, so samft's own `initialize_config_*` calls in
    the same process still work (use `sam2_hydra()` around Meta's config-name builders).
    The torchvision stand-in leaves `sys.modules` once imported, as in `reference.py`.
    """
    from hydra.core.global_hydra import GlobalHydra

    hydra_was_initialized = GlobalHydra.instance().is_initialized()
    installed = _install_torchvision_stand_in()
    try:
        import sam2
        import sam2.automatic_mask_generator  # noqa: F401
        import sam2.build_sam  # noqa: F401
        import sam2.modeling.backbones.hieradet  # noqa: F401
        import sam2.modeling.backbones.image_encoder  # noqa: F401
        import sam2.modeling.sam.mask_decoder  # noqa: F401
        import sam2.modeling.sam.prompt_encoder  # noqa: F401
        import sam2.modeling.sam.transformer  # noqa: F401
        import sam2.sam2_image_predictor  # noqa: F401
        import sam2.sam2_video_predictor  # noqa: F401
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from err
    finally:
        if installed:
            for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
                del sys.modules[name]
        if not hydra_was_initialized:
            GlobalHydra.instance().clear()
    return sam2


@contextmanager
def sam2_hydra() -> Iterator[None]:
    """Hydra initialised on `sam2`'s configs for the duration, as it was before after.

    Meta's `build_sam2(config_name, ...)` composes through Hydra's global state.
    """
    from hydra import initialize_config_module

    with initialize_config_module("sam2", version_base="1.2"):
        yield


# Meta's SAM2Base with the architecture of samft's `sam2_tiny` and small video parts.
# The decoder's hyper-parameters are the ones SAM2Base hard-codes (depth 2, MLP 2048,
# 8 heads, IoU head 256), as `sam2_tiny` keeps them.
_TINY_D, _TINY_MEM = 64, 16


def tiny_config(target: str = "sam2.modeling.sam2_base.SAM2Base") -> dict[str, Any]:
    """The `model` node of a tiny SAM 2.1-style config (pass to `hydra.utils.instantiate`).

    `target` may be `sam2.sam2_video_predictor.SAM2VideoPredictor` for the video model.
    """
    d, mem = _TINY_D, _TINY_MEM

    def rope(**kw: Any) -> dict[str, Any]:
        return {
            "_target_": "sam2.modeling.sam.transformer.RoPEAttention",
            "rope_theta": 10000.0,
            "feat_sizes": [16, 16],
            "embedding_dim": d,
            "num_heads": 1,
            "downsample_rate": 1,
            "dropout": 0.1,
            **kw,
        }

    def sine(feats: int) -> dict[str, Any]:
        return {
            "_target_": "sam2.modeling.position_encoding.PositionEmbeddingSine",
            "num_pos_feats": feats,
            "normalize": True,
            "scale": None,
            "temperature": 10000,
        }

    return {
        "_target_": target,
        "image_encoder": {
            "_target_": "sam2.modeling.backbones.image_encoder.ImageEncoder",
            "scalp": 1,
            "trunk": {
                "_target_": "sam2.modeling.backbones.hieradet.Hiera",
                "embed_dim": 16,
                "num_heads": 2,
                "stages": [1, 1, 2, 1],
                "global_att_blocks": [3],
                "window_spec": [8, 4, 4, 4],
                "window_pos_embed_bkg_spatial_size": [4, 4],
            },
            "neck": {
                "_target_": "sam2.modeling.backbones.image_encoder.FpnNeck",
                "position_encoding": sine(d),
                "d_model": d,
                "backbone_channel_list": [128, 64, 32, 16],
                "fpn_top_down_levels": [2, 3],
                "fpn_interp_model": "nearest",
            },
        },
        "memory_attention": {
            "_target_": "sam2.modeling.memory_attention.MemoryAttention",
            "d_model": d,
            "pos_enc_at_input": True,
            "num_layers": 1,
            "layer": {
                "_target_": "sam2.modeling.memory_attention.MemoryAttentionLayer",
                "activation": "relu",
                "dim_feedforward": 128,
                "dropout": 0.1,
                "pos_enc_at_attn": False,
                "d_model": d,
                "pos_enc_at_cross_attn_keys": True,
                "pos_enc_at_cross_attn_queries": False,
                "self_attention": rope(),
                "cross_attention": rope(rope_k_repeat=True, kv_in_dim=mem),
            },
        },
        "memory_encoder": {
            "_target_": "sam2.modeling.memory_encoder.MemoryEncoder",
            "out_dim": mem,
            "in_dim": d,
            "position_encoding": sine(mem),
            "mask_downsampler": {
                "_target_": "sam2.modeling.memory_encoder.MaskDownSampler",
                "embed_dim": d,
                "kernel_size": 3,
                "stride": 2,
                "padding": 1,
            },
            "fuser": {
                "_target_": "sam2.modeling.memory_encoder.Fuser",
                "num_layers": 1,
                "layer": {
                    "_target_": "sam2.modeling.memory_encoder.CXBlock",
                    "dim": d,
                    "kernel_size": 7,
                    "padding": 3,
                    "layer_scale_init_value": 1e-6,
                    "use_dwconv": True,
                },
            },
        },
        "num_maskmem": 7,
        "image_size": 256,
        "sigmoid_scale_for_mem_enc": 20.0,
        "sigmoid_bias_for_mem_enc": -10.0,
        "use_mask_input_as_output_without_sam": True,
        "directly_add_no_mem_embed": True,
        "no_obj_embed_spatial": True,
        "use_high_res_features_in_sam": True,
        "multimask_output_in_sam": True,
        "iou_prediction_use_sigmoid": True,
        "use_obj_ptrs_in_encoder": True,
        "add_tpos_enc_to_obj_ptrs": True,
        "proj_tpos_enc_in_obj_ptrs": True,
        "use_signed_tpos_enc_to_obj_ptrs": True,
        "only_obj_ptrs_in_the_past_for_eval": True,
        "pred_obj_scores": True,
        "pred_obj_scores_mlp": True,
        "fixed_no_obj_ptr": True,
        "multimask_output_for_tracking": True,
        "use_multimask_token_for_obj_ptr": True,
        "multimask_min_pt_num": 0,
        "multimask_max_pt_num": 1,
        "use_mlp_for_obj_ptr_proj": True,
        "compile_image_encoder": False,
        # what Meta's build_sam2 adds (apply_postprocessing=True)
        "sam_mask_decoder_extra_args": {
            "dynamic_multimask_via_stability": True,
            "dynamic_multimask_stability_delta": 0.05,
            "dynamic_multimask_stability_thresh": 0.98,
        },
    }


def build_tiny_meta(target: str = "sam2.modeling.sam2_base.SAM2Base") -> nn.Module:
    """Meta's model from `tiny_config(target)`, random weights, eval mode (needs
    `import_sam2()` first)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    model = instantiate(OmegaConf.create(tiny_config(target)), _recursive_=True)
    return model.eval()


def perturb_(model: nn.Module, seed: int, scale: float = 0.05) -> nn.Module:
    """Add seeded noise to every floating tensor of the state dict, so zero-initialised
    parameters (position embeddings, `no_mem_embed`'s neighbours) carry signal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=gen) * scale)
    return model


def perturbed_tiny_meta(seed: int) -> nn.Module:
    """Meta's model of `tiny_config()`, built after `torch.manual_seed(0)` and `perturb_`ed
    with `seed`, in eval mode (needs `import_sam2()` first)."""
    torch.manual_seed(0)
    return perturb_(build_tiny_meta(), seed=seed)


def save_meta_tiny(path: Path, seed: int) -> nn.Module:
    """`perturbed_tiny_meta(seed)` saved to `path` as Meta ships its SAM 2 checkpoints
    (`{"model": state_dict}`); the model (needs `import_sam2()` first)."""
    ref = perturbed_tiny_meta(seed)
    torch.save({"model": ref.state_dict()}, path)
    return ref


def same_weights_tiny(seed: int) -> tuple[nn.Module, nn.Module]:
    """(samft's `sam2_tiny`, Meta's model of `tiny_config()`) holding the same random
    weights, `perturb_`ed with `seed`, both in eval mode (needs `import_sam2()` first)."""
    from samft.model.registry import build_sam

    ref = perturbed_tiny_meta(seed)
    ours = build_sam("sam2_tiny")
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours.eval(), ref

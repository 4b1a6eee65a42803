"""What an embedding depends on besides the image (`CacheKey`), and how entries are named."""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from samft.data.dataset import ORIENTATIONS

CACHE_FORMAT_VERSION = 1


class CacheError(RuntimeError):
    """A cache that cannot be used: stale, partial, missing or unreadable."""


@dataclass(frozen=True)
class CacheKey:
    """Everything besides the image that an embedding depends on."""

    encoder_sha256: str
    image_size: int
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    normalization: str = "mean_std"
    resize_interpolation: str = "bilinear"
    format_version: int = CACHE_FORMAT_VERSION

    def as_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def encoder_sha256(encoder: nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and bytes, sorted by name).

    Hashing the weights rather than the checkpoint file means the same weights saved as
    .pth or .safetensors share a cache, and resized position embeddings do not.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(sam: nn.Module) -> CacheKey:
    """The key of a `Sam`'s image encoder and preprocessing."""
    return CacheKey(
        encoder_sha256=encoder_sha256(sam.image_encoder),
        image_size=int(sam.image_size),
        pixel_mean=tuple(float(v) for v in sam.pixel_mean.flatten()),
        pixel_std=tuple(float(v) for v in sam.pixel_std.flatten()),
        normalization=str(getattr(sam, "normalization", "mean_std")),
        resize_interpolation=str(getattr(sam, "resize_interpolation", "bilinear")),
    )


def entry_name(path: str | Path, orientation: str) -> str:
    """The manifest key of one image file shown in one orientation."""
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation = {orientation!r}; expected one of {ORIENTATIONS}")
    return f"{Path(path).resolve()}#{orientation}"


def file_stamp(path: str | Path) -> dict[str, int]:
    """Size and modification time of a file: what tells an edited image apart."""
    stat = os.stat(path)
    return {"bytes": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}


def describe_key_mismatch(found: dict[str, Any], expected: dict[str, Any]) -> str:
    """'' when equal, else e.g. "image_size is 512, expected 1024"."""
    parts = []
    for name, want in expected.items():
        have = found.get(name)
        if have != want:
            if name == "encoder_sha256":
                parts.append(
                    f"built for other encoder weights (sha256 {str(have)[:12]}..., "
                    f"the model's is {str(want)[:12]}...)"
                )
            else:
                parts.append(f"{name} is {have!r}, expected {want!r}")
    return "; ".join(parts)

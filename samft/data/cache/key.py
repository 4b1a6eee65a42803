"""What an embedding depends on besides the image (`CacheKey`), and how entries are named."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from samft.data.dataset import ORIENTATIONS

CACHE_FORMAT_VERSION = 2  # 2: per-entry checksums, image stamp choice
IMAGE_STAMPS = ("mtime", "content")


class CacheError(RuntimeError):
    """A cache that cannot be used: stale, partial, missing or unreadable. The user fixes
    it (rebuild with `python -m samft cache`, or set `cache.dir`), so the CLI says it in one
    line and exits 2."""

    exit_code = 2


@dataclass(frozen=True)
class CacheKey:
    """Everything besides the image that an embedding depends on."""

    encoder_sha256: str
    image_size: int
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    normalization: str = "mean_std"
    resize_interpolation: str = "bilinear"
    image_stamp: str = "mtime"  # how an edited image is told apart: "mtime" or "content"
    format_version: int = CACHE_FORMAT_VERSION

    def as_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def encoder_sha256(encoder: nn.Module | Mapping[str, Tensor]) -> str:
    """sha256 of a module's state dict, or of a state dict (names, dtypes, shapes and
    bytes, sorted by name).

    Hashing the weights rather than the checkpoint file means the same weights saved as
    .pth or .safetensors share a cache, and resized position embeddings do not.
    """
    state = encoder.state_dict() if isinstance(encoder, nn.Module) else encoder
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-dim too
    return digest.hexdigest()


def cache_key(sam: nn.Module, image_stamp: str = "mtime") -> CacheKey:
    """The key of a model's encoder and preprocessing (`Sam`, `Sam2`: every tensor its
    `encode` depends on, `encoder_state_dict`); `image_stamp` says how an image file is
    recognised as unchanged (`file_stamp`)."""
    if image_stamp not in IMAGE_STAMPS:
        raise ValueError(f"cache.image_stamp={image_stamp!r}: expected one of {IMAGE_STAMPS}")
    return CacheKey(
        encoder_sha256=encoder_sha256(sam.encoder_state_dict()),
        image_size=int(sam.image_size),
        pixel_mean=tuple(float(v) for v in sam.pixel_mean.flatten()),
        pixel_std=tuple(float(v) for v in sam.pixel_std.flatten()),
        normalization=str(getattr(sam, "normalization", "mean_std")),
        resize_interpolation=str(getattr(sam, "resize_interpolation", "bilinear")),
        image_stamp=image_stamp,
    )


def entry_name(path: str | Path, orientation: str) -> str:
    """The manifest key of one image file shown in one orientation."""
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation = {orientation!r}; expected one of {ORIENTATIONS}")
    return f"{Path(path).resolve()}#{orientation}"


def file_stamp(path: str | Path, image_stamp: str = "mtime") -> dict[str, int | str]:
    """What tells an edited image apart: its size and modification time ("mtime", cheap),
    or its size and the sha256 of its bytes ("content": also catches an edit that kept
    both, e.g. a copy with `cp -p` or a restored backup)."""
    stat = os.stat(path)
    if image_stamp == "content":
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
        return {"bytes": int(stat.st_size), "sha256": digest.hexdigest()}
    return {"bytes": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}


def tensor_digest(tensor: Tensor) -> str:
    """A short checksum of a tensor's bytes, stored per entry and checked on every read."""
    data = tensor.detach().cpu().contiguous().view(torch.uint8).numpy()
    return hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest()


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

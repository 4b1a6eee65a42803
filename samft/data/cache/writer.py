"""Build (or complete) a cache: embed each image once per orientation, write fp16 shards."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from samft.data.cache.key import (
    CacheKey,
    describe_key_mismatch,
    entry_name,
    file_stamp,
    tensor_digest,
)
from samft.data.cache.reader import MANIFEST, read_manifest
from samft.data.dataset import orient
from samft.data.resize import resize_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheJob:
    """One image file to embed in some orientations; `load` returns its H x W x 3 uint8."""

    path: Path
    orientations: tuple[str, ...]
    load: Callable[[], np.ndarray]


def build_cache(
    root: str | Path,
    key: CacheKey,
    jobs: Sequence[CacheJob],
    embed: Callable[[Tensor], Tensor],
    batch_size: int = 4,
    shard_mb: float = 1024,
) -> dict[str, int]:
    """Write the embeddings of `jobs` into `root`, resuming a partial build with the same key.

    Args:
        root: the cache directory (created if needed).
        key: the model's `cache_key`; a cache with another key is replaced.
        jobs: the images and the orientations each must be cached in.
        embed: a list of B uint8 images `3 x h x w` (resized to the input frame, not
            normalised or padded) -> `B x C x h' x w'` embeddings, or a tuple of such
            `B x ...` levels (SAM 2's `Sam2.to_cached`), each stored as its own tensor.
        batch_size: images per `embed` call.
        shard_mb: a shard is closed when it holds this many megabytes.

    Returns:
        counts: `computed`, `reused` (already cached and unchanged) and `entries`.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    old = read_manifest(root)
    if old is not None and describe_key_mismatch(old.get("key", {}), key.as_json()):
        log.info("cache %s was built for another model or preprocessing: rebuilding", root)
        for shard in old.get("shards", {}):
            (root / shard).unlink(missing_ok=True)
        old = None
    manifest = {
        "key": key.as_json(),
        "complete": False,
        "shards": {},
        "entries": {},
    }
    if old is not None:  # keep what is still valid: the shards listed were fully written
        manifest["shards"] = {
            s: info
            for s, info in old["shards"].items()
            if (root / s).is_file() and (root / s).stat().st_size == info["bytes"]
        }
        manifest["entries"] = {
            n: e for n, e in old["entries"].items() if e["shard"] in manifest["shards"]
        }

    todo: list[tuple[CacheJob, str, dict[str, int]]] = []
    reused = 0
    for job in jobs:
        stamp = file_stamp(job.path, key.image_stamp)
        for orientation in job.orientations:
            entry = manifest["entries"].get(entry_name(job.path, orientation))
            if entry is not None and entry["image"] == stamp:
                reused += 1
            else:
                todo.append((job, orientation, stamp))

    writer = _ShardWriter(root, manifest, shard_mb * 2**20)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        images = [
            torch.from_numpy(
                np.ascontiguousarray(
                    resize_image(
                        orient(job.load(), orientation), key.image_size, key.resize_interpolation
                    ).transpose(2, 0, 1)
                )
            )
            for job, orientation, _ in chunk
        ]
        with torch.no_grad():
            embeddings = per_image(embed(images))
        for (job, orientation, stamp), embedding in zip(chunk, embeddings, strict=True):
            writer.add(entry_name(job.path, orientation), embedding, stamp)
        log.info("cache %s: %d / %d embeddings computed", root, start + len(chunk), len(todo))
    writer.close()
    manifest["complete"] = True
    write_manifest(root, manifest)
    return {"computed": len(todo), "reused": reused, "entries": len(manifest["entries"])}


def per_image(
    embeddings: Tensor | Sequence[Tensor],
) -> list[Tensor] | list[tuple[Tensor, ...]]:
    """`B x ...` (or a tuple of `B x ...` levels) -> B fp16 CPU tensors (or level tuples)."""
    if isinstance(embeddings, Tensor):
        return list(embeddings.to("cpu", torch.float16))
    levels = [level.to("cpu", torch.float16) for level in embeddings]
    return list(zip(*levels, strict=True))


class _ShardWriter:
    """Collect embeddings; write a shard (atomically) and then the manifest when full."""

    def __init__(self, root: Path, manifest: dict[str, Any], shard_bytes: float) -> None:
        self.root, self.manifest, self.shard_bytes = root, manifest, shard_bytes
        self.pending: dict[str, tuple[str, Tensor, dict[str, int]]] = {}
        self.size = 0
        numbers = [int(s[6:11]) for s in manifest["shards"]]
        self.next_shard = max(numbers, default=-1) + 1

    def add(self, name: str, embedding: Tensor | tuple[Tensor, ...], stamp: dict[str, int]) -> None:
        if isinstance(embedding, Tensor):
            embedding = embedding.contiguous()
            self.size += embedding.numel() * embedding.element_size()
        else:
            embedding = tuple(level.contiguous() for level in embedding)
            self.size += sum(level.numel() * level.element_size() for level in embedding)
        self.pending[f"e{len(self.pending):06d}"] = (name, embedding, stamp)
        if self.size >= self.shard_bytes:
            self.close()

    def close(self) -> None:
        if not self.pending:
            return
        shard = f"shard-{self.next_shard:05d}.safetensors"
        self.next_shard += 1
        tmp = self.root / f".{shard}.tmp"
        tensors: dict[str, Tensor] = {}
        for tensor, (_, embedding, _) in self.pending.items():
            if isinstance(embedding, Tensor):
                tensors[tensor] = embedding
            else:  # SAM 2's levels: e000000.0, e000000.1, ...
                tensors.update({f"{tensor}.{i}": level for i, level in enumerate(embedding)})
        try:
            save_file(tensors, str(tmp))
            os.replace(tmp, self.root / shard)
        finally:  # a stop or an error halfway leaves no half-written file
            tmp.unlink(missing_ok=True)
        self.manifest["shards"][shard] = {"bytes": (self.root / shard).stat().st_size}
        for tensor, (name, embedding, stamp) in self.pending.items():
            if isinstance(embedding, Tensor):
                names, digest = tensor, tensor_digest(embedding)
            else:  # lists: one name and one checksum per level
                names = [f"{tensor}.{i}" for i in range(len(embedding))]
                digest = [tensor_digest(level) for level in embedding]
            self.manifest["entries"][name] = {
                "shard": shard,
                "tensor": names,
                "image": stamp,
                "digest": digest,
            }
        write_manifest(self.root, self.manifest)
        self.pending, self.size = {}, 0


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically: a reader sees the old or the new one, never half."""
    tmp = root / f".{MANIFEST}.tmp"
    try:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(tmp, root / MANIFEST)
    finally:
        tmp.unlink(missing_ok=True)

"""An on-disk cache of image embeddings from a frozen image encoder.

With the encoder frozen, its output for an image never changes during training, and it is
by far the most expensive part of a step (vit_b: ~16 s per 1024 px image on a 2-core CPU).
`python -m samft cache` computes each embedding once; training then reads it instead.

Layout of a cache directory:

    manifest.json              what the embeddings depend on (`CacheKey`), one entry per
                               (image file, orientation), and `complete`, true only once
                               every entry is written (the manifest is replaced atomically)
    shard-00000.safetensors    fp16 embeddings `C x h x w`, read memory-mapped

An entry is keyed on the image file's absolute path and its orientation (`none`, `h`, `v`,
`hv`: the flips a sample may show); it records the file's size and modification time, so an
edited image is noticed. A cache built for another encoder (sha256 of its weights), input
size, pixel mean/std or format version, a cache missing entries, or one whose build was
interrupted is refused with an error that says which; it is never used silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from samft.data.dataset import ORIENTATIONS, orient
from samft.data.resize import resize_image

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FLIP_TRANSFORMS = {"HorizontalFlip": "h", "VerticalFlip": "v"}


class CacheError(RuntimeError):
    """A cache that cannot be used: stale, partial, missing or unreadable."""


@dataclass(frozen=True)
class CacheKey:
    """Everything besides the image that an embedding depends on."""

    encoder_sha256: str
    image_size: int
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
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


# --------------------------------------------------------------- what a cache can serve
def flip_probabilities(augment: Any) -> tuple[tuple[float, float] | None, str]:
    """(p horizontal, p vertical) of a flip-only pipeline, else (None, why not).

    Only flips can be served: each orientation of an image is cached. Any other
    geometric or colour transform changes the pixels in ways no cache holds.
    """
    if augment is None:
        return (0.0, 0.0), ""
    transforms = getattr(augment, "transforms", None)
    if type(augment).__name__ != "Compose" or transforms is None:
        return None, f"the augmentation {type(augment).__name__} is not a plain list of flips"
    if getattr(augment, "p", 1.0) < 1.0:
        return None, "the augmentation pipeline is applied with p < 1"
    probs = {"h": 0.0, "v": 0.0}
    others = []
    for transform in transforms:
        axis = FLIP_TRANSFORMS.get(type(transform).__name__)
        if axis is None:
            others.append(type(transform).__name__)
        else:
            probs[axis] = 1 - (1 - probs[axis]) * (1 - float(transform.p))
    if others:
        return None, (
            f"data.train_augment has {', '.join(others)}; the cache serves only "
            f"{' and '.join(FLIP_TRANSFORMS)} (each orientation is cached)"
        )
    return (probs["h"], probs["v"]), ""


def orientations_for(flip_probs: tuple[float, float]) -> list[str]:
    """The orientations a sample can show with these flip probabilities."""
    p_h, p_v = flip_probs
    return [o for o in ORIENTATIONS if ("h" not in o or p_h > 0) and ("v" not in o or p_v > 0)]


def why_not_cached(encoder_mode: str, augment: Any) -> str:
    """'' when training can read embeddings from a cache, else the reason it cannot."""
    if encoder_mode != "frozen":
        return (
            f"finetune.image_encoder = {encoder_mode}: the encoder is trained, so its "
            "embeddings change every step"
        )
    return flip_probabilities(augment)[1]


# ----------------------------------------------------------------------- reading
class EmbeddingCache:
    """Read access to a complete cache whose key matches (see `open`)."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self.entries: dict[str, dict[str, Any]] = manifest["entries"]
        self._handles: dict[str, Any] = {}

    @classmethod
    def open(cls, root: str | Path, key: CacheKey) -> EmbeddingCache:
        """Open `root` for a model with `key`; CacheError when missing, stale or partial."""
        root = Path(root)
        manifest = read_manifest(root)
        if manifest is None:
            raise CacheError(
                f"no embedding cache at {root} ({MANIFEST} not found): build it with "
                f"`python -m samft cache <same overrides> cache.dir={root}`"
            )
        mismatch = describe_key_mismatch(manifest.get("key", {}), key.as_json())
        if mismatch:
            raise CacheError(
                f"embedding cache {root} is stale: {mismatch}. Rebuild it with "
                "`python -m samft cache` and the training overrides"
            )
        if not manifest.get("complete"):
            raise CacheError(
                f"embedding cache {root} is partial (its build did not finish): run "
                "`python -m samft cache` again to complete it"
            )
        for shard, info in manifest["shards"].items():
            path = root / shard
            if not path.is_file() or path.stat().st_size != info["bytes"]:
                raise CacheError(
                    f"embedding cache {root}: shard {shard} is missing or has a different "
                    f"size than the manifest's {info['bytes']} bytes"
                )
        return cls(root, manifest)

    def check_covers(self, images: Iterable[str | Path], orientations: Sequence[str]) -> None:
        """CacheError unless every image is cached, unchanged, in every orientation."""
        missing, changed = [], []
        for path in images:
            stamp = file_stamp(path)
            for orientation in orientations:
                entry = self.entries.get(entry_name(path, orientation))
                if entry is None:
                    missing.append(f"{path} ({orientation})")
                elif entry["image"] != stamp:
                    changed.append(str(path))
        if changed:
            raise CacheError(
                f"embedding cache {self.root} is stale: {len(changed)} image file(s) changed "
                f"since they were cached (size or modification time), e.g. {changed[0]}"
            )
        if missing:
            raise CacheError(
                f"embedding cache {self.root} lacks {len(missing)} embedding(s), e.g. "
                f"{', '.join(missing[:3])}: run `python -m samft cache` with the training "
                "overrides (the same data and augmentation)"
            )

    def get(self, path: str | Path, orientation: str) -> Tensor:
        """The fp16 embedding `C x h x w` of one image in one orientation."""
        entry = self.entries[entry_name(path, orientation)]
        handle = self._handles.get(entry["shard"])
        if handle is None:
            handle = safe_open(str(self.root / entry["shard"]), framework="pt")
            self._handles[entry["shard"]] = handle
        return handle.get_tensor(entry["tensor"])

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get a copy without open files; each opens its own.
        return {**self.__dict__, "_handles": {}}


def read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CacheError(f"embedding cache manifest {path} is not valid JSON: {exc}") from exc


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


# ----------------------------------------------------------------------- writing
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
            normalised or padded) -> `B x C x h' x w'` embeddings.
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
        stamp = file_stamp(job.path)
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
                    resize_image(orient(job.load(), orientation), key.image_size).transpose(2, 0, 1)
                )
            )
            for job, orientation, _ in chunk
        ]
        with torch.no_grad():
            embeddings = embed(images).to("cpu", torch.float16)
        for (job, orientation, stamp), embedding in zip(chunk, embeddings, strict=True):
            writer.add(entry_name(job.path, orientation), embedding, stamp)
        log.info("cache %s: %d / %d embeddings computed", root, start + len(chunk), len(todo))
    writer.close()
    manifest["complete"] = True
    write_manifest(root, manifest)
    return {"computed": len(todo), "reused": reused, "entries": len(manifest["entries"])}


class _ShardWriter:
    """Collect embeddings; write a shard (atomically) and then the manifest when full."""

    def __init__(self, root: Path, manifest: dict[str, Any], shard_bytes: float) -> None:
        self.root, self.manifest, self.shard_bytes = root, manifest, shard_bytes
        self.pending: dict[str, tuple[str, Tensor, dict[str, int]]] = {}
        self.size = 0
        numbers = [int(s[6:11]) for s in manifest["shards"]]
        self.next_shard = max(numbers, default=-1) + 1

    def add(self, name: str, embedding: Tensor, stamp: dict[str, int]) -> None:
        self.pending[f"e{len(self.pending):06d}"] = (name, embedding.contiguous(), stamp)
        self.size += embedding.numel() * embedding.element_size()
        if self.size >= self.shard_bytes:
            self.close()

    def close(self) -> None:
        if not self.pending:
            return
        shard = f"shard-{self.next_shard:05d}.safetensors"
        self.next_shard += 1
        tmp = self.root / f".{shard}.tmp"
        save_file({t: e for t, (_, e, _) in self.pending.items()}, str(tmp))
        os.replace(tmp, self.root / shard)
        self.manifest["shards"][shard] = {"bytes": (self.root / shard).stat().st_size}
        for tensor, (name, _, stamp) in self.pending.items():
            self.manifest["entries"][name] = {"shard": shard, "tensor": tensor, "image": stamp}
        write_manifest(self.root, self.manifest)
        self.pending, self.size = {}, 0


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically: a reader sees the old or the new one, never half."""
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, root / MANIFEST)


# ---------------------------------------------------------------------- training
class EmbeddingCacheCallback(L.Callback):
    """Make training read embeddings from `cache_dir` when it can, and log why when not.

    At `setup` (after the datamodule's): when the encoder is frozen and the training
    augmentation is flips only, the cache is opened, checked against the model (key) and
    against every image of the datasets (entries, file stamps), and the datasets then serve
    embeddings. A stale or partial cache stops training with a `CacheError`.
    """

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.cache: EmbeddingCache | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.cache_dir is None:
            return
        datamodule = trainer.datamodule
        datasets = getattr(datamodule, "datasets", None)
        if datasets is None:
            log.warning("embedding cache %s not used: no SamDataModule", self.cache_dir)
            return
        augment = getattr(datamodule, "augment", None)
        reason = why_not_cached(pl_module.finetune_config.image_encoder, augment)
        if reason:
            log.warning("embedding cache %s not used: %s", self.cache_dir, reason)
            return
        if self.cache is None:
            self.cache = EmbeddingCache.open(self.cache_dir, cache_key(pl_module.model))
        flips = flip_probabilities(augment)[0]
        for split, dataset in datasets.items():
            if dataset.embeddings is not None:
                continue
            probs = flips if split == "train" else (0.0, 0.0)
            paths = [dataset.record(i).path for i in range(len(dataset))]
            self.cache.check_covers(paths, orientations_for(probs))
            dataset.use_embeddings(self.cache, probs)
            log.info("data.%s: image embeddings read from cache %s", split, self.cache_dir)

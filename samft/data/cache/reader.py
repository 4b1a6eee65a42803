"""Read a complete cache whose key matches; refuse a stale, partial or damaged one."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from safetensors import safe_open
from torch import Tensor

from samft.data.cache.key import (
    CacheError,
    CacheKey,
    describe_key_mismatch,
    entry_name,
    file_stamp,
    tensor_digest,
)

MANIFEST = "manifest.json"


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
            stamp = file_stamp(path, self.manifest["key"].get("image_stamp", "mtime"))
            for orientation in orientations:
                entry = self.entries.get(entry_name(path, orientation))
                if entry is None:
                    missing.append(f"{path} ({orientation})")
                elif entry["image"] != stamp:
                    changed.append(str(path))
        if changed:
            raise CacheError(
                f"embedding cache {self.root} is stale: {len(changed)} image file(s) changed "
                f"since they were cached (size, modification time or content), e.g. "
                f"{changed[0]}: run `python -m samft cache` again to update them"
            )
        if missing:
            raise CacheError(
                f"embedding cache {self.root} lacks {len(missing)} embedding(s), e.g. "
                f"{', '.join(missing[:3])}: run `python -m samft cache` with the training "
                "overrides (the same data and augmentation)"
            )

    def get(self, path: str | Path, orientation: str) -> Tensor | tuple[Tensor, ...]:
        """The fp16 embedding `C x h x w` of one image in one orientation (SAM 2: a tuple
        of its three levels), checked against the checksum written with it (a shard
        damaged in place is a CacheError, never silently trained on)."""
        entry = self.entries[entry_name(path, orientation)]
        if isinstance(entry["tensor"], list):  # several levels, one checksum each
            return tuple(
                self._read(path, orientation, entry["shard"], name, digest)
                for name, digest in zip(entry["tensor"], entry["digest"], strict=True)
            )
        return self._read(path, orientation, entry["shard"], entry["tensor"], entry["digest"])

    def _read(
        self, path: str | Path, orientation: str, shard: str, name: str, digest: str
    ) -> Tensor:
        """One stored tensor, checked against its checksum."""
        handle = self._handles.get(shard)
        try:
            if handle is None:
                handle = safe_open(str(self.root / shard), framework="pt")
                self._handles[shard] = handle
            tensor = handle.get_tensor(name)
        except Exception as err:  # SafetensorError (a damaged header), OSError: not readable
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CacheError(
                f"embedding cache {self.root}: shard {shard} cannot be read "
                f"({reason}); rebuild it: delete the shard and run `python -m samft cache` again"
            ) from None
        if tensor_digest(tensor) != digest:
            raise CacheError(
                f"embedding cache {self.root}: shard {shard} is damaged (the "
                f"embedding of {path} ({orientation}) does not match its checksum); rebuild "
                "it: delete the shard and run `python -m samft cache` again"
            )
        return tensor

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

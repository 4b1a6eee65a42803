"""`python -m samft weights`: list known pretrained weights, fetch or add one to the cache.

The work is `samft.weights.known`; this file only reads the config and prints.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from samft.weights.files import CheckpointError
from samft.weights.known import (
    copy_into_cache,
    describe_known,
    fetch,
    known_entry,
    not_known_message,
    unpinned_url,
)

COLUMNS = ("name", "variant", "size_mb", "cached", "source")


def _entry(name: str, key: str):
    entry = known_entry(name)
    if entry is None:
        if unpinned_url(name) is not None:
            raise CheckpointError(f"{key}={not_known_message(name)}")
        raise CheckpointError(f"{key}={name}: not a known weights name (see the list below)")
    return entry


def weights(cfg: DictConfig) -> list[dict[str, str]]:
    """Fetch or add what `cfg` asks for, then return the table rows."""
    if cfg.fetch:
        fetch(_entry(cfg.fetch, "fetch"), cfg.cache_dir)
    if cfg.add:
        entry = _entry(cfg.add, "add")
        if not cfg.file:
            raise CheckpointError("add=NAME needs file=PATH: the file you downloaded")
        copy_into_cache(entry, cfg.file, cfg.cache_dir)
    return describe_known(cfg.cache_dir)


def format_rows(rows: list[dict[str, str]]) -> str:
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(lines)


HOW_TO = (
    "fetch one now: python -m samft weights fetch=NAME  |  add a file you downloaded: "
    "python -m samft weights add=NAME file=PATH  |  use one: model.checkpoint=NAME"
)


@hydra.main(version_base="1.3", config_path="pkg://samft.conf", config_name="weights")
def main(cfg: DictConfig) -> None:
    print(format_rows(weights(cfg)))
    print(
        "\nSAM 2.0 (sam2_hiera_tiny, ...) is not fetched by name (no public sha256 to pin): "
        "download it from Meta and pass its path"
    )
    print(HOW_TO)

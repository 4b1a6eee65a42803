"""`python -m samft data +experiment=NAME`: what the data module reads, as numbers and pictures.

Composes the same config as `train`, so it shows exactly the data a run would see.
"""

from __future__ import annotations

import json
import logging

import hydra
from omegaconf import DictConfig

from samft.commands.common import build_datamodule, prepare_dataset
from samft.data.images import allow_image_pixels
from samft.data.report import write_data_report

log = logging.getLogger(__name__)


def summary_lines(splits: dict[str, dict]) -> list[str]:
    """One readable line per split, from the statistics `write_data_report` returns."""
    lines = []
    for split, stats in splits.items():
        compact = {k: v for k, v in stats.items() if not isinstance(v, (dict, list))}
        lines.append(f"{split}: " + json.dumps(compact))
        for key in ("objects_per_image", "object_area", "object_sizes", "skipped", "augmentation"):
            if stats.get(key):
                lines.append(f"  {key}: {json.dumps(stats[key])}")
    return lines


@hydra.main(version_base="1.3", config_path="pkg://samft.conf", config_name="data_report")
def main(cfg: DictConfig) -> None:
    allow_image_pixels(cfg.max_image_pixels)
    prepare_dataset(cfg)
    report = write_data_report(build_datamodule(cfg), cfg.output_dir)
    for line in summary_lines(report["splits"]):
        print(line)
    print("wrote " + ", ".join(report["files"]))

"""`samft data`: write every split's statistics (JSON) and a grid of its samples (PNG)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from samft.data.datamodule import SPLITS, SamDataModule
from samft.data.dataset import AUG_DROPPED, AUG_FALLBACK
from samft.data.stats import dataset_statistics
from samft.data.visualize import render_sample_grid


def write_data_report(
    datamodule: SamDataModule, output_dir: str | Path, num_samples: int = 8, tile: int = 320
) -> dict[str, Any]:
    """Write `data_stats.json` and `<split>_samples.png` for every configured split.

    The training grid shows augmented samples; the objects that augmentation dropped while
    drawing them are added to that split's statistics under `augmentation`.
    Returns {"splits": {split: statistics}, "files": [written paths]}.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"splits": {}, "files": []}
    for split in SPLITS:
        if datamodule.specs[split] is None:
            continue
        dataset = datamodule.build_dataset(split)
        stats = dataset_statistics(dataset)
        before = dataset.runtime.copy()
        grid = render_sample_grid(dataset, num_samples=num_samples, tile=tile)
        drawn = min(num_samples, len(dataset))
        stats["augmentation"] = {"samples_drawn": drawn}
        for key in (AUG_DROPPED, AUG_FALLBACK):
            stats["augmentation"][key] = dataset.runtime[key] - before[key]
        picture = output_dir / f"{split}_samples.png"
        Image.fromarray(grid).save(picture)
        report["splits"][split] = stats
        report["files"].append(str(picture))
    stats_path = output_dir / "data_stats.json"
    stats_path.write_text(json.dumps(report["splits"], indent=2) + "\n", encoding="utf-8")
    report["files"].append(str(stats_path))
    return report

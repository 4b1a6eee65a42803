"""The composed config of a training run, written into its folder once the folder is ours.

Hydra would write `<run>/.hydra/{config,hydra,overrides}.yaml` before samft could check
the run folder's lock, so a second run refused there would already have replaced the live
run's record. `conf/train.yaml` turns Hydra's own writing off (`hydra.output_subdir: null`)
and `samft train` calls `write_run_config` after taking the lock, with the same files.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

RUN_CONFIG_DIR = ".hydra"


def write_run_config(cfg: DictConfig, output_dir: Path) -> Path | None:
    """Write the task config, Hydra's config and the command-line overrides under
    `output_dir/.hydra/`; returns that folder (None outside a Hydra app: nothing written)."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    folder = Path(output_dir) / RUN_CONFIG_DIR
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), folder / "hydra.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, folder / "overrides.yaml")
    return folder

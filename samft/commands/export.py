"""`python -m samft export checkpoint=RUN.ckpt output=FILE [format=...]`.

format: official (.pth and .safetensors, the default), pth, safetensors, onnx or transformers
(a `SamModel`, or `Sam2Model` for SAM 2, folder). The work
is `samft.weights.export.export_checkpoint`; this file only reads the config.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from samft.weights.export import export_checkpoint

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="pkg://samft.conf", config_name="export")
def main(cfg: DictConfig) -> None:
    if cfg.format == "onnx":
        from samft.weights.onnx import require_onnx

        require_onnx()  # before reading the checkpoint: the install command, not torch's error
    written = export_checkpoint(
        cfg.checkpoint,
        cfg.output,
        format=cfg.format,
        variant=cfg.variant,
        return_single_mask=cfg.return_single_mask,
    )
    for name, path in written.items():
        log.info("%s: %s", name, path)

"""What a samft Lightning checkpoint says about its run: config, step, scores.

Read with `weights_only=True` and memory-mapped, so only the metadata is touched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from samft.io.files import output_stem
from samft.weights.files import safe_torch_load

LIGHTNING_KEY = "pytorch-lightning_version"
SIDECAR_FORMAT = "samft-export/1"


def read_lightning_info(path: str | Path) -> dict[str, Any] | None:
    """Training metadata of a samft Lightning checkpoint, or None for plain weights.

    Returns `hyper_parameters` (the plain dicts SamFineTuner saves), `epoch`,
    `global_step` and `callback_metrics` (each ModelCheckpoint's monitored best and
    current score). Loaded with `weights_only=True`, like the weights themselves.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return None
    try:
        # memory-mapped: only the metadata is read, not gigabytes of tensors
        container = safe_torch_load(path, mmap=True)
    except Exception:  # read_state_dict reports unreadable or unsafe files with the reason
        return None
    if not isinstance(container, Mapping) or LIGHTNING_KEY not in container:
        return None
    return {
        "hyper_parameters": _plain(container.get("hyper_parameters") or {}),
        "epoch": container.get("epoch"),
        "global_step": container.get("global_step"),
        "callback_metrics": _callback_metrics(container.get("callbacks") or {}),
    }


def _plain(value: Any) -> Any:
    """Hyper-parameters as JSON-ready values (tuples become lists, tensors numbers)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def _callback_metrics(callbacks: Mapping[str, Any]) -> dict[str, float]:
    """`{"best/val/miou": ..., "current/val/miou": ...}` from ModelCheckpoint states."""
    found: dict[str, float] = {}
    for state in callbacks.values():
        if not isinstance(state, Mapping) or not state.get("monitor"):
            continue
        for which in ("best_model_score", "current_score"):
            score = state.get(which)
            if score is None:
                continue
            score = float(score)
            if math.isfinite(score):
                found[f"{which.split('_')[0]}/{state['monitor']}"] = score
    return found


def final_validation_metrics(
    checkpoint: str | Path, info: Mapping[str, Any] | None
) -> tuple[dict[str, float], str | None]:
    """The run's final validation metrics and where they came from.

    `final_metrics.json` (written by `samft train` at the end of the run) in the
    checkpoint's folder or the run folder above `checkpoints/` comes first; otherwise
    the scores the ModelCheckpoint callbacks stored in the checkpoint.
    """
    checkpoint = Path(checkpoint).resolve()
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        candidate = folder / "final_metrics.json"
        if candidate.is_file():
            try:
                values = json.loads(candidate.read_text())
                return {str(k): float(v) for k, v in values.items()}, str(candidate)
            except (ValueError, TypeError, AttributeError):
                continue  # a malformed file is no reason to fail the export
    if info and info.get("callback_metrics"):
        return dict(info["callback_metrics"]), "checkpoint callbacks"
    return {}, None


def checkpoint_kind(path: str | Path) -> str:
    """ "lightning" (a samft training checkpoint), "export" (has a samft sidecar) or
    "weights" (anything else, e.g. Meta's official `.pth`)."""
    path = Path(path)
    if read_lightning_info(path) is not None:
        return "lightning"
    sidecar = output_stem(path).with_suffix(".json")
    if sidecar.is_file():
        try:
            if json.loads(sidecar.read_text()).get("format") == SIDECAR_FORMAT:
                return "export"
        except (ValueError, AttributeError):
            pass
    return "weights"

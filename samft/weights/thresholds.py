"""The automatic mask generator's thresholds kept in an export's sidecar.

`samft eval mode=instance` chooses `pred_iou_thresh` and `stability_score_thresh` on a
dataset (and records the `covered_thresh` they were chosen with);
`export_checkpoint(..., automatic_thresholds=...)` or `eval`'s `instance.write_thresholds_to=`
stores them in the sidecar `<stem>.json` under `automatic_thresholds`, and `samft segment`
reads them back for that checkpoint.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from samft.io.files import write_json_atomic
from samft.weights.lightning import SIDECAR_FORMAT

SIDECAR_KEY = "automatic_thresholds"
THRESHOLD_KEYS = ("pred_iou_thresh", "stability_score_thresh")
# may be absent from a sidecar (written before it existed, or never used): the default then
OPTIONAL_KEYS = ("covered_thresh",)
# the defaults of Meta's SamAutomaticMaskGenerator (which has no covered-mask suppression);
# SAM 2's generator has pred_iou_thresh 0.8 (`Sam2.automatic_thresholds`)
META_DEFAULTS = {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "covered_thresh": 1.0}


def check_thresholds(values: Any, where: str) -> dict[str, Any]:
    """`values` with both thresholds (and `covered_thresh`, when present) as floats in
    [0, 1]; other keys (where they were chosen, the score) are kept. A ValueError names
    `where` otherwise."""
    if not isinstance(values, Mapping):
        raise ValueError(
            f"{where}: expected a mapping with {' and '.join(THRESHOLD_KEYS)}, got {values!r}"
        )
    checked = dict(values)
    present = [key for key in OPTIONAL_KEYS if values.get(key) is not None]
    for key in (*THRESHOLD_KEYS, *present):
        checked[key] = unit_interval(values.get(key), f"{where}.{key}")
    return checked


def unit_interval(value: Any, name: str) -> float:
    """`value` as a float in [0, 1], or a ValueError naming `name`."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (is_number and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} = {value!r}; expected a number in [0, 1]")
    return float(value)


def sidecar_of(checkpoint: str | Path) -> Path | None:
    """The samft export sidecar beside `checkpoint` (`exports/m.pth` -> `exports/m.json`,
    a transformers folder `exports/m/` -> `exports/m.json`), or None when there is none."""
    path = Path(checkpoint).expanduser()
    if not path.exists():  # a known weights name: no sidecar
        return None
    candidate = path.with_suffix(".json") if path.is_file() else path.with_name(path.name + ".json")
    if candidate == path or not candidate.is_file():
        return None
    try:
        data = json.loads(candidate.read_text())
    except (OSError, ValueError):
        return None
    return candidate if isinstance(data, dict) and data.get("format") == SIDECAR_FORMAT else None


def read_sidecar(path: str | Path, what: str) -> dict[str, Any]:
    """A samft export sidecar as a dict; a ValueError naming `what` and the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what}: no such file {path}; expected the .json sidecar of an export")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{what}: cannot read {path} as JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ValueError(
            f"{what}: {path} is not a samft export sidecar (its 'format' is not "
            f"{SIDECAR_FORMAT!r}); `python -m samft export` writes one beside the weights"
        )
    return data


def sidecar_thresholds(checkpoint: str | Path) -> tuple[dict[str, Any] | None, Path | None]:
    """(`automatic_thresholds` of the checkpoint's sidecar or None, the sidecar or None)."""
    sidecar = sidecar_of(checkpoint)
    if sidecar is None:
        return None, None
    entry = read_sidecar(sidecar, f"sidecar of checkpoint={checkpoint}").get(SIDECAR_KEY)
    if entry is None:
        return None, sidecar
    return check_thresholds(entry, f"{sidecar}: {SIDECAR_KEY}"), sidecar


def write_sidecar_thresholds(path: str | Path, thresholds: Mapping[str, Any], what: str) -> Path:
    """Set `automatic_thresholds` in the existing sidecar `path` (atomically)."""
    data = read_sidecar(path, what)
    data[SIDECAR_KEY] = check_thresholds(thresholds, SIDECAR_KEY)
    return write_json_atomic(Path(path), data)

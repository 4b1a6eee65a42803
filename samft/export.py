"""Export a trained checkpoint in the official layout, with a JSON sidecar that says what it is.

A samft Lightning checkpoint holds the Sam (keys `model.image_encoder...`), unmerged LoRA
adapters, optimizer and loop state. The export keeps only the network, with LoRA folded
into the base weights (`samft.checkpoint.read_state_dict` does both), and writes it as
`.pth` (a bare state dict, as Meta ships SAM) and/or `.safetensors`. Either file loads
strictly in `segment_anything.sam_model_registry[variant]` (for vit_b/l/h at 1024 px) or
in `samft.checkpoint.load_sam`.

The sidecar `<stem>.json` records the variant, the input size, samft's version, the
training config (the Lightning checkpoint's hyper-parameters), the final validation
metrics and the sha256 of the source, so an exported file can be traced to its run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import samft
from samft.checkpoint import (
    infer_image_size,
    load_sam,
    read_sam_state_dict,
    save_sam,
)

SIDECAR_FORMAT = "samft-export/1"
WEIGHT_FORMATS = {"pth": ".pth", "safetensors": ".safetensors"}
FORMATS = ("official", "pth", "safetensors", "onnx")
KNOWN_SUFFIXES = (".pth", ".pt", ".safetensors", ".onnx", ".json")
LIGHTNING_KEY = "pytorch-lightning_version"


class OutputError(ValueError):
    """An output path that cannot be written."""


# --------------------------------------------------------------------------- outputs
def prepare_output_dir(path: str | Path, what: str) -> Path:
    """Create folder `path` if needed and prove it is writable, before any long work.

    `what` names the setting in the error, e.g. "output=exports/model".
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise OutputError(
            f"{what}: cannot write to folder {path} ({reason}); expected a folder that "
            "exists or can be created, and is writable"
        ) from None
    return path


def output_stem(output: str | Path) -> Path:
    """`exports/model.pth` -> `exports/model`: the output without a known extension."""
    output = Path(output)
    return output.with_suffix("") if output.suffix in KNOWN_SUFFIXES else output


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write `data` as indented JSON via a temporary file and `os.replace`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------ the source checkpoint
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
        container = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        try:  # files in the legacy (non-zip) format cannot be memory-mapped
            container = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # read_state_dict reports unreadable files with the reason
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


# --------------------------------------------------------------------------- export
def export_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    format: str = "official",
    variant: str | None = None,
    return_single_mask: bool = True,
) -> dict[str, Path]:
    """Export `checkpoint` to `output` (extension optional) plus the sidecar `<stem>.json`.

    format: "official" writes `<stem>.pth` and `<stem>.safetensors`; "pth" or
    "safetensors" one of them; "onnx" `<stem>.encoder.onnx` and `<stem>.decoder.onnx`
    (see `samft.onnx_export`). variant: checked against the file when given.
    Returns the written paths by name ("pth", "safetensors", "encoder", "decoder",
    "sidecar").
    """
    if format not in FORMATS:
        raise ValueError(f"export format={format!r}; expected one of {list(FORMATS)}")
    checkpoint = Path(checkpoint)
    stem = output_stem(output)
    prepare_output_dir(stem.parent, f"output={output}")

    state_dict, found_variant = read_sam_state_dict(checkpoint, variant)
    image_size = infer_image_size(state_dict)
    info = read_lightning_info(checkpoint)

    written: dict[str, Path] = {}
    if format == "onnx":
        from samft.onnx_export import export_onnx  # torch.onnx is slow to import

        sam = load_sam(checkpoint, variant=found_variant, image_size=image_size)
        written.update(export_onnx(sam, stem, return_single_mask=return_single_mask))
    else:
        names = WEIGHT_FORMATS if format == "official" else {format: WEIGHT_FORMATS[format]}
        for name, suffix in names.items():
            written[name] = save_sam(state_dict, stem.with_name(stem.name + suffix))
            _default_permissions(written[name])

    sidecar = build_sidecar(checkpoint, found_variant, image_size, info, written)
    if format == "onnx":
        sidecar["onnx"] = {
            "opset": 17,
            "return_single_mask": return_single_mask,
            "encoder_input": "image 1x3xhxw float32 RGB 0..255, long side = image_size",
            "decoder_inputs": [
                "image_embeddings",
                "point_coords",
                "point_labels",
                "mask_input",
                "has_mask_input",
                "orig_im_size",
            ],
        }
    sidecar_path = stem.with_name(stem.name + ".json")
    written["sidecar"] = write_json_atomic(sidecar_path, _merge_sidecar(sidecar_path, sidecar))
    return written


def _merge_sidecar(path: Path, new: dict[str, Any]) -> dict[str, Any]:
    """Keep the files (and ONNX notes) of an earlier export of the same source at `path`,
    so exporting `official` and then `onnx` to one stem leaves one sidecar for all."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return new
    if not isinstance(old, dict) or old.get("format") != SIDECAR_FORMAT:
        return new
    if old.get("source", {}).get("sha256") != new["source"]["sha256"]:
        return new
    merged = {**old, **new, "files": {**old.get("files", {}), **new["files"]}}
    return merged


def build_sidecar(
    checkpoint: Path,
    variant: str,
    image_size: int,
    info: Mapping[str, Any] | None,
    files: Mapping[str, Path],
) -> dict[str, Any]:
    """The JSON record written beside an export."""
    metrics, metrics_source = final_validation_metrics(checkpoint, info)
    return {
        "format": SIDECAR_FORMAT,
        "variant": variant,
        "image_size": image_size,
        "samft_version": samft.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {
            "path": str(checkpoint.resolve()),
            "sha256": sha256_file(checkpoint),
            "kind": "lightning" if info is not None else "weights",
            "epoch": info.get("epoch") if info else None,
            "global_step": info.get("global_step") if info else None,
        },
        "training_config": dict(info["hyper_parameters"]) if info else None,
        "validation_metrics": metrics,
        "validation_metrics_source": metrics_source,
        "files": {name: _file_entry(path) for name, path in files.items()},
    }


def _default_permissions(path: Path) -> None:
    """Give a written file the permissions of any new file (0666 minus the umask).

    safetensors writes its files owner-only (0600), which surprises whoever the export is
    shared with on a multi-user machine.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _file_entry(path: Path) -> dict[str, Any]:
    return {"path": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}

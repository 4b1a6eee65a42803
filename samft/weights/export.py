"""Export a trained checkpoint in the official layout, with a JSON sidecar that says what it is.

A samft Lightning checkpoint holds the Sam (keys `model.image_encoder...`), unmerged LoRA
adapters, optimizer and loop state. The export keeps only the network, with LoRA folded
into the base weights (`samft.weights.read_state_dict` does both), and writes it as
`.pth` (a bare state dict, as Meta ships SAM) and/or `.safetensors`. Either file loads
strictly in `segment_anything.sam_model_registry[variant]` (for vit_b/l/h at 1024 px) or
in `samft.weights.load_sam`.

A checkpoint trained with an instance head (`instance_head.*` keys; SAM or SAM 2) also gets
`<stem>.instance_head.safetensors` beside the SAM files, which stay as they are; the sidecar
lists it under `files` and describes it under `instance_head` (`samft.weights.instance_head`,
whose `load_instance_head(<stem>.pth)` loads it).

The sidecar `<stem>.json` records the variant, the input size, samft's version, the
training config (the Lightning checkpoint's hyper-parameters), the final validation
metrics and the sha256 of the source, so an exported file can be traced to its run.

A SAM 2 model exports in Meta's layout: `<stem>.pth` is `{"model": state_dict}` with the
video parts it carries, bit for bit, so Meta's `build_sam2` and
`build_sam2_video_predictor` load it strictly with the variant's config; its sidecar also
records SAM 2's preprocessing (`preprocessing`), Meta's config and the video parts.
Its `format=transformers` export is a `Sam2Model` folder (the image model: `Sam2Model` has
no place for the video parts, which the sidecar counts as left out); its `format=onnx`
export takes the three feature levels (`samft.weights.onnx`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import samft
from samft.io.files import (
    OutputError,
    output_stem,
    prepare_output_dir,
    sha256_file,
    write_json_atomic,
)
from samft.model.registry import Sam2HyperParams, get_hyper_params
from samft.model.sam2.model import IMAGENET_MEAN, IMAGENET_STD, LOW_RES_CLAMP
from samft.weights.instance_head import (
    FILE_SUFFIX,
    read_instance_head,
    save_instance_head,
    sidecar_entry,
)
from samft.weights.instance_head import (
    SIDECAR_KEY as HEAD_KEY,
)
from samft.weights.known import resolve_checkpoint
from samft.weights.lightning import SIDECAR_FORMAT, final_validation_metrics, read_lightning_info
from samft.weights.load import load_sam, read_sam_state_dict
from samft.weights.sam2_layout import META_CONFIGS, video_keys
from samft.weights.save import save_sam
from samft.weights.shapes import infer_image_size
from samft.weights.thresholds import SIDECAR_KEY, check_thresholds
from samft.weights.transformers_layout import (
    transformers_weights_path,
    write_transformers_checkpoint,
)

WEIGHT_FORMATS = {"pth": ".pth", "safetensors": ".safetensors"}
FORMATS = ("official", "pth", "safetensors", "onnx", "transformers")


def export_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    format: str = "official",
    variant: str | None = None,
    return_single_mask: bool = True,
    automatic_thresholds: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Export `checkpoint` to `output` (extension optional) plus the sidecar `<stem>.json`.

    format: "official" writes `<stem>.pth` and `<stem>.safetensors`; "pth" or
    "safetensors" one of them; "onnx" `<stem>.encoder.onnx` and `<stem>.decoder.onnx`
    (see `samft.weights.onnx`); "transformers" the folder `<stem>/` of a Hugging Face
    `SamModel` (see `samft.weights.transformers_layout`). variant: checked against the
    file when given. Returns the written paths by name ("pth", "safetensors", "encoder",
    "decoder", "transformers_config", "transformers_weights",
    "transformers_preprocessor", "sidecar"). automatic_thresholds: `pred_iou_thresh` and
    `stability_score_thresh` for `samft segment` (e.g. chosen by `samft eval
    mode=instance`), written into the sidecar as `automatic_thresholds`.
    """
    if format not in FORMATS:
        raise ValueError(f"export format={format!r}; expected one of {list(FORMATS)}")
    if automatic_thresholds is not None:
        automatic_thresholds = check_thresholds(automatic_thresholds, "automatic_thresholds")
    checkpoint = resolve_checkpoint(checkpoint)
    stem = output_stem(output)
    prepare_output_dir(stem.parent, f"output={output}")
    refuse_folders_in_the_way(stem, format, output)

    state_dict, found_variant = read_sam_state_dict(checkpoint, variant)
    is_sam2 = isinstance(get_hyper_params(found_variant), Sam2HyperParams)
    if format == "transformers" and get_hyper_params(found_variant).encoder == "tiny_vit":
        raise ValueError(
            f"export format=transformers: transformers' SamModel has only SAM's ViT image "
            f"encoder, and '{found_variant}' ({checkpoint}) has a TinyViT one, so its weights "
            "have no place in that layout. Use format=official (its .pth loads in the family's "
            "own code and in samft.weights.load_sam) or format=onnx; README: 'Which export "
            "for which model'"
        )
    image_size = infer_image_size(state_dict)
    info = read_lightning_info(checkpoint)

    written: dict[str, Path] = {}
    if format == "transformers":
        hp = get_hyper_params(found_variant)
        for name, path in write_transformers_checkpoint(state_dict, stem, image_size, hp).items():
            _default_permissions(path)
            written[f"transformers_{name}"] = path
    elif format == "onnx":
        from samft.weights.onnx import export_onnx  # torch.onnx is slow to import

        sam = load_sam(checkpoint, variant=found_variant, image_size=image_size)
        written.update(export_onnx(sam, stem, return_single_mask=return_single_mask))
    else:
        names = WEIGHT_FORMATS if format == "official" else {format: WEIGHT_FORMATS[format]}
        for name, suffix in names.items():
            written[name] = save_sam(state_dict, stem.with_name(stem.name + suffix))
            _default_permissions(written[name])
    head = (
        read_instance_head(checkpoint) if format in WEIGHT_FORMATS or format == "official" else None
    )
    if head is not None:
        written["instance_head"] = save_instance_head(
            head[0], stem.with_name(stem.name + FILE_SUFFIX)
        )
        _default_permissions(written["instance_head"])

    source = checkpoint
    if checkpoint.is_dir():  # a transformers folder: trace the export to its weights file
        source = transformers_weights_path(checkpoint)
    sidecar = build_sidecar(source, found_variant, image_size, info, written, automatic_thresholds)
    if is_sam2:
        carried = len(video_keys(state_dict))
        sidecar.update(sam2_sidecar(found_variant, image_size, carried))
        if format in ("transformers", "onnx"):
            sidecar["load_with"] = SAM2_LOADERS[format]
            sidecar["video_parts"] = {"tensors": carried, "in_this_export": False}
    if format == "transformers":  # the files lie in <stem>/, beside the sidecar
        for name in written:
            sidecar["files"][name]["path"] = f"{stem.name}/{written[name].name}"
    if format == "onnx":
        sidecar["onnx"] = onnx_sidecar(is_sam2, return_single_mask)
    if head is not None:
        sidecar[HEAD_KEY] = sidecar_entry(written["instance_head"], head[0])
        if head[1].get("thresholds"):  # an export of an export keeps its chosen thresholds
            sidecar[HEAD_KEY]["thresholds"] = head[1]["thresholds"]
    sidecar_path = stem.with_name(stem.name + ".json")
    written["sidecar"] = write_json_atomic(sidecar_path, _merge_sidecar(sidecar_path, sidecar))
    return written


SAM2_LOADERS = {
    "transformers": "transformers.Sam2Model.from_pretrained(FOLDER) (and Sam2Processor), or "
    "samft.weights.load_sam(FOLDER)",
    "onnx": "onnxruntime.InferenceSession(PATH) (samft.weights.onnx: inputs and outputs)",
}


def onnx_sidecar(is_sam2: bool, return_single_mask: bool) -> dict[str, Any]:
    """The sidecar's `onnx` entry: opset, the mask choice and the models' inputs."""
    from samft.weights.onnx import DECODER_INPUTS, OPSET, SAM2_DECODER_INPUTS

    if is_sam2:
        encoder_input = (
            "image 1x3xSxS float32 RGB 0..255, resized to image_size x image_size "
            "(bilinear, antialiased)"
        )
        inputs = SAM2_DECODER_INPUTS
    else:
        encoder_input = "image 1x3xhxw float32 RGB 0..255, long side = image_size"
        inputs = DECODER_INPUTS
    return {
        "opset": OPSET,
        "return_single_mask": return_single_mask,
        "encoder_input": encoder_input,
        "decoder_inputs": list(inputs),
    }


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


def loader_for(variant: str, image_size: int) -> str:
    """The code that loads an export of `variant` at `image_size` px strictly, as a line of
    Python (written into the sidecar so nobody has to guess the registry entry)."""
    default = get_hyper_params(variant).image_size
    if variant in ("vit_b", "vit_l", "vit_h") and image_size == default:
        return f'segment_anything.sam_model_registry["{variant}"](checkpoint=PATH)'
    if variant == "vit_t" and image_size == default:
        return 'mobile_sam.sam_model_registry["vit_t"](checkpoint=PATH)'
    if variant == "lite_medsam" and image_size == default:
        return (
            "LiteMedSAM's MedSAM_Lite model (bowang-lab/MedSAM, LiteMedSAM branch): "
            "model.load_state_dict(torch.load(PATH)); or samft.weights.load_sam(PATH)"
        )
    return f"samft.weights.load_sam(PATH)  # {variant} at {image_size} px: no registry entry"


def sam2_loader_for(variant: str, image_size: int, video_tensors: int) -> str:
    """`loader_for` of a SAM 2 export: Meta's builders for a released variant at its size
    with its video parts, else samft."""
    config = META_CONFIGS.get(variant)
    if config is None or image_size != get_hyper_params(variant).image_size:
        return f"samft.weights.load_sam(PATH)  # {variant} at {image_size} px: no Meta config"
    if not video_tensors:
        return (
            "samft.weights.load_sam(PATH)  # no video parts: Meta's build_sam2 needs the "
            "video model's tensors (export a model loaded from Meta's file)"
        )
    return (
        f'sam2.build_sam.build_sam2("{config}", ckpt_path=PATH) or '
        f'sam2.build_sam.build_sam2_video_predictor("{config}", ckpt_path=PATH)  # the .pth'
    )


def sam2_sidecar(variant: str, image_size: int, video_tensors: int) -> dict[str, Any]:
    """What a SAM 2 sidecar adds: how to load it, its preprocessing (so that other code can
    reproduce it) and the video parts it carries."""
    return {
        "load_with": sam2_loader_for(variant, image_size, video_tensors),
        "meta_config": META_CONFIGS.get(variant),
        "preprocessing": {
            "image": "RGB, pixels / 255, resized to image_size x image_size (aspect ratio "
            "not kept; bilinear, antialiased), minus pixel_mean over pixel_std",
            "pixel_mean": list(IMAGENET_MEAN),
            "pixel_std": list(IMAGENET_STD),
            "prompts": "x * image_size / W, y * image_size / H (original W x H); a box is "
            "two points labelled 2 and 3 before the clicks",
            "masks": "low-res logits (image_size / 4) resized bilinearly to H x W; the "
            f"predictor returns low-res logits clamped to +-{LOW_RES_CLAMP:g}",
        },
        "video_parts": {"tensors": video_tensors, "carried_unchanged": True},
    }


def build_sidecar(
    checkpoint: Path,
    variant: str,
    image_size: int,
    info: Mapping[str, Any] | None,
    files: Mapping[str, Path],
    automatic_thresholds: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON record written beside an export; `automatic_thresholds` (the automatic
    mask generator's, see `samft.weights.thresholds`) only when given, so that merging
    with an earlier sidecar of the same source keeps the thresholds it holds."""
    metrics, metrics_source = final_validation_metrics(checkpoint, info)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "variant": variant,
        "image_size": image_size,
        "normalization": get_hyper_params(variant).normalization,
        "resize_interpolation": get_hyper_params(variant).resize_interpolation,
        "load_with": loader_for(variant, image_size),
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
    if automatic_thresholds is not None:
        sidecar[SIDECAR_KEY] = check_thresholds(automatic_thresholds, SIDECAR_KEY)
    return sidecar


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


def refuse_folders_in_the_way(stem: Path, format: str, output: str | Path) -> None:
    """OutputError, before any work, when a file the export writes is an existing folder."""
    suffixes = {
        "official": list(WEIGHT_FORMATS.values()),
        "onnx": [".encoder.onnx", ".decoder.onnx"],
        "transformers": [],
    }.get(format, [WEIGHT_FORMATS.get(format, "")])
    for suffix in [*suffixes, ".json"]:
        target = stem.with_name(stem.name + suffix)
        if target.is_dir():
            raise OutputError(
                f"output={output}: the export would write the file {target}, which is a "
                "folder; give output= a file name (e.g. exports/my_sam) or move that folder"
            )

"""Prompted prediction over files: every image of a folder with its prompts from a prompts
file, through `SamPredictor`, written as mask PNGs, scores and overlays.

For every image with prompts (see `samft.infer.prompts_file` for the file format) it writes

    DIR/<image>/<prompt name>.png   the mask of each prompt, 0 / 255, original size
    DIR/<image>/overlay.png         the image with every mask, point and box drawn on it
    DIR/scores.json                 per image and prompt: the mask file, the IoU head's
                                    score of the kept mask and of every candidate, area

where <image> is the image's path under `input` without its extension.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from samft.data.images import input_image_size, read_rgb
from samft.infer.overlay import draw_overlay
from samft.infer.predictor import SamPredictor
from samft.infer.prompts_file import PromptsFileError, PromptSpec, check_inside, read_prompts_file
from samft.io.files import prepare_output_dir, write_image_atomic, write_json_atomic
from samft.model.device import resolve_device
from samft.weights import load_sam

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MULTIMASK_CHOICES = ("auto", True, False)


class InputNotFoundError(FileNotFoundError, ValueError):
    """`input=` names no image: a user error (a short message, exit 2), still a
    FileNotFoundError for callers that catch that."""


def list_images(input_path: str | Path) -> list[tuple[Path, str]]:
    """(path, key) of the image `input_path` or of every image under that folder.

    The key is the path relative to the folder (posix), or the file name for one image.
    """
    input_path = Path(input_path)
    if input_path.is_file():
        return [(input_path, input_path.name)]
    if not input_path.is_dir():
        raise InputNotFoundError(f"input={input_path}: no such image or folder")
    found = sorted(
        p for p in input_path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not found:
        raise InputNotFoundError(
            f"input={input_path}: the folder holds no image ({', '.join(IMAGE_SUFFIXES)})"
        )
    return [(p, p.relative_to(input_path).as_posix()) for p in found]


def _multimask(setting: Any, prompt: PromptSpec) -> bool:
    """'auto': three candidate masks for a lone click (ambiguous), one mask otherwise."""
    if setting == "auto":
        return prompt.is_single_point
    return bool(setting)


def predict(
    checkpoint: str | Path,
    input: str | Path,
    prompts: str | Path,
    output: str | Path,
    variant: str | None = None,
    image_size: int | None = None,
    multimask_output: bool | str = "auto",
    device: str = "auto",
    overlay: bool = True,
) -> dict[str, Any]:
    """Masks, scores and overlays for every image of `input` that has prompts.

    Everything that can be checked without the model is checked first (prompts file,
    images, prompts inside their images, output folder), so a mistake costs no model
    load. Returns the content of `scores.json`.
    """
    if multimask_output not in MULTIMASK_CHOICES:
        raise ValueError(f"multimask_output={multimask_output!r}; expected auto, true or false")
    prompts_file = read_prompts_file(prompts)
    images = list_images(input)
    typos = prompts_file.unmatched_keys(key for _, key in images)
    if typos:
        raise PromptsFileError(
            f"prompts file {prompts_file.path} names image(s) {typos} that are not under "
            f"input={input}"
        )
    jobs = []
    for path, key in images:
        specs = prompts_file.for_image(key)
        if not specs:
            log.info("no prompts for %s: skipped", key)
            continue
        height, width = input_image_size(path, input)
        for spec in specs:
            check_inside(spec, height, width, f"prompts file {prompts_file.path}, image '{key}'")
        jobs.append((path, key, specs))
    if not jobs:
        raise PromptsFileError(
            f"prompts file {prompts_file.path} has prompts for none of the "
            f"{len(images)} image(s) under input={input}"
        )
    out_dir = prepare_output_dir(output, f"output={output}")

    sam = load_sam(checkpoint, variant=variant, image_size=image_size).to(resolve_device(device))
    predictor = SamPredictor(sam)
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "image_size": sam.image_size,
        "images": [],
    }
    for path, key, specs in jobs:
        image = read_rgb(path)
        predictor.set_image(image)
        folder = out_dir / Path(key).with_suffix("")
        folder.mkdir(parents=True, exist_ok=True)
        kept_masks, entries = [], []
        for spec in specs:
            multimask = _multimask(multimask_output, spec)
            masks, scores, _ = predictor.predict(
                point_coords=spec.points,
                point_labels=spec.labels,
                box=spec.box,
                multimask_output=multimask,
            )
            best = int(np.argmax(scores))
            mask = masks[best]
            mask_file = folder / f"{spec.name}.png"
            write_image_atomic(mask_file, mask.astype(np.uint8) * 255)
            kept_masks.append(mask)
            entries.append(
                {
                    "name": spec.name,
                    "mask": mask_file.relative_to(out_dir).as_posix(),
                    "score": float(scores[best]),
                    "scores": [float(s) for s in scores],
                    "chosen": best,
                    "multimask_output": multimask,
                    "area": int(mask.sum()),
                }
            )
        entry: dict[str, Any] = {
            "image": key,
            "height": image.shape[0],
            "width": image.shape[1],
            "prompts": entries,
        }
        if overlay:
            picture = draw_overlay(image, kept_masks, specs, [e["score"] for e in entries])
            overlay_file = folder / "overlay.png"
            write_image_atomic(overlay_file, picture)
            entry["overlay"] = overlay_file.relative_to(out_dir).as_posix()
        report["images"].append(entry)
        log.info("%s: %d mask(s) written to %s", key, len(specs), folder)
    write_json_atomic(out_dir / "scores.json", report)
    return report

"""`python -m samft predict checkpoint=PATH input=IMAGE_OR_FOLDER prompts=FILE output=DIR`.

For every image with prompts (see `samft.infer.prompts_file` for the file format) it writes

    DIR/<image>/<prompt name>.png   the mask of each prompt, 0 / 255, original size
    DIR/<image>/overlay.png         the image with every mask, point and box drawn on it
    DIR/scores.json                 per image and prompt: the mask file, the IoU head's
                                    score of the kept mask and of every candidate, area

where <image> is the image's path under `input` without its extension. Inference is
`samft.infer.predictor.SamPredictor` (the official predictor's API and processing).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from samft.data.images import read_rgb
from samft.infer.predictor import SamPredictor
from samft.infer.prompts_file import PromptsFileError, PromptSpec, check_inside, read_prompts_file
from samft.io.files import prepare_output_dir, write_json_atomic
from samft.weights import load_sam

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MULTIMASK_CHOICES = ("auto", True, False)
POSITIVE_COLOUR = (40, 220, 40)
NEGATIVE_COLOUR = (230, 30, 30)


def list_images(input_path: str | Path) -> list[tuple[Path, str]]:
    """(path, key) of the image `input_path` or of every image under that folder.

    The key is the path relative to the folder (posix), or the file name for one image.
    """
    input_path = Path(input_path)
    if input_path.is_file():
        return [(input_path, input_path.name)]
    if not input_path.is_dir():
        raise FileNotFoundError(f"input={input_path}: no such image or folder")
    found = sorted(
        p for p in input_path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not found:
        raise FileNotFoundError(
            f"input={input_path}: the folder holds no image ({', '.join(IMAGE_SUFFIXES)})"
        )
    return [(p, p.relative_to(input_path).as_posix()) for p in found]


def _multimask(setting: Any, prompt: PromptSpec) -> bool:
    """'auto': three candidate masks for a lone click (ambiguous), one mask otherwise."""
    if setting == "auto":
        return prompt.is_single_point
    return bool(setting)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
        with Image.open(path) as header:
            width, height = header.size
        for spec in specs:
            check_inside(spec, height, width, f"prompts file {prompts_file.path}, image '{key}'")
        jobs.append((path, key, specs))
    if not jobs:
        raise PromptsFileError(
            f"prompts file {prompts_file.path} has prompts for none of the "
            f"{len(images)} image(s) under input={input}"
        )
    out_dir = prepare_output_dir(output, f"output={output}")

    sam = load_sam(checkpoint, variant=variant, image_size=image_size).to(_device(device))
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
            Image.fromarray(mask.astype(np.uint8) * 255).save(mask_file)
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
            Image.fromarray(picture).save(overlay_file)
            entry["overlay"] = overlay_file.relative_to(out_dir).as_posix()
        report["images"].append(entry)
        log.info("%s: %d mask(s) written to %s", key, len(specs), folder)
    write_json_atomic(out_dir / "scores.json", report)
    return report


def _palette(n: int) -> list[tuple[int, int, int]]:
    """n distinct bright RGB colours (hues spaced by the golden ratio)."""
    hues = (np.arange(n) * 0.618034 % 1.0 * 179).astype(np.uint8)
    hsv = np.stack([hues, np.full(n, 210, np.uint8), np.full(n, 255, np.uint8)], axis=1)
    rgb = cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]
    return [tuple(int(c) for c in colour) for colour in rgb]


def draw_overlay(
    image: np.ndarray,
    masks: list[np.ndarray],
    prompts: list[PromptSpec],
    scores: list[float],
    alpha: float = 0.45,
) -> np.ndarray:
    """H x W x 3 uint8: `image` with each mask tinted and outlined, its prompt drawn
    (positive points green, negative red, the box in the mask's colour) and its score."""
    canvas = image.astype(np.float32)
    colours = _palette(len(masks))
    for mask, colour in zip(masks, colours, strict=True):
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * np.asarray(colour, np.float32)
    canvas = canvas.clip(0, 255).astype(np.uint8)
    thickness = max(1, round(max(image.shape[:2]) / 400))
    for mask, colour, prompt, score in zip(masks, colours, prompts, scores, strict=True):
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(canvas, contours, -1, colour, thickness)
        anchor = (4, 16)
        if prompt.box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in prompt.box)
            cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, thickness + 1)
            anchor = (x0, max(y0 - 4, 12))
        if prompt.points is not None:
            for (x, y), label in zip(prompt.points, prompt.labels, strict=True):
                centre = (int(round(x)), int(round(y)))
                fill = POSITIVE_COLOUR if label == 1 else NEGATIVE_COLOUR
                cv2.circle(canvas, centre, 3 * thickness + 2, fill, -1)
                cv2.circle(canvas, centre, 3 * thickness + 2, (255, 255, 255), 1)
            if prompt.box is None:
                anchor = (int(prompt.points[0][0]) + 8, int(prompt.points[0][1]) - 8)
        text = f"{prompt.name} {score:.2f}"
        cv2.putText(canvas, text, anchor, cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3)
        cv2.putText(canvas, text, anchor, cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1)
    return canvas


@hydra.main(version_base="1.3", config_path="pkg://samft.conf", config_name="predict")
def hydra_main(cfg: DictConfig) -> None:
    predict(
        checkpoint=cfg.checkpoint,
        input=cfg.input,
        prompts=cfg.prompts_file,
        output=cfg.output,
        variant=cfg.variant,
        image_size=cfg.image_size,
        multimask_output=cfg.multimask_output,
        device=cfg.device,
        overlay=cfg.overlay,
    )


def main() -> None:
    """Run the Hydra app, reading `prompts=FILE` as `prompts_file=FILE`.

    `prompts` is also a config group (conf/prompts/, the training prompt samplers), so
    Hydra would look for FILE among that group's options.
    """
    sys.argv = [
        "prompts_file=" + arg.split("=", 1)[1] if arg.startswith("prompts=") else arg
        for arg in sys.argv
    ]
    hydra_main()

"""Segment everything over files: every image of a folder through `AutomaticMaskGenerator`
(`mode=grid`) or a trained instance head (`mode=head`, `samft.infer.head_segment`),
written as an instance-id map, the masks with their scores, and an overlay. `mode=auto`
(the default) uses the head when the checkpoint holds one, else the grid.

For every image under `input` it writes

    DIR/<image>/labels.png    16-bit instance ids, 0 = background; masks are painted largest
                              first, each smaller one over them, so smaller ones stay
                              visible (`records_to_labels`); ids 1..N
    DIR/<image>/masks.json    every mask the generator kept, largest first, as COCO RLE with
                              its `id` in labels.png (null when smaller masks cover all of it),
                              predicted_iou, stability_score, area, bbox [x, y, w, h],
                              point_coords [[x, y]] and crop_box (original frame)
    DIR/<image>/overlay.png   the image with every instance tinted and outlined
    DIR/segments.json         the checkpoint, the settings, the thresholds and where they came
                              from, and per image its counts and files

where <image> is the image's path under `input` without its extension; a head's records
carry `score` (mean foreground probability) instead of predicted_iou and stability_score,
and its thresholds (foreground_thresh, center_thresh, boundary_thresh, min_size) come
from the argument, else the sidecar's `instance_head.thresholds`, else 0.5 / 0.5 / 0.5 / 0.
For the grid, thresholds left null
come from the checkpoint's export sidecar (`automatic_thresholds`, written by `samft eval
mode=instance`), else are the defaults of Meta's generator for the model's generation
(`SamAutomaticMaskGenerator` 0.88 / 0.95, `SAM2AutomaticMaskGenerator` 0.8 / 0.95;
`covered_thresh` 1: no suppression).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from samft.data.errors import DataError
from samft.data.images import input_image_size, read_rgb
from samft.infer.automatic import CROP_OVERLAP_RATIO, AutomaticMaskGenerator
from samft.infer.head_segment import HeadInstanceSegmenter
from samft.infer.instance_overlay import draw_instances
from samft.infer.predict import list_images
from samft.infer.record_masks import records_to_labels, segmentation_mask
from samft.io.drawing import write_note
from samft.io.files import prepare_output_dir, write_image_atomic, write_json_atomic
from samft.io.progress import ProgressLines, off_terminal
from samft.model.device import resolve_device
from samft.weights import load_sam
from samft.weights.instance_head import (
    DEFAULT_THRESHOLDS,
    check_head_thresholds,
    head_thresholds,
    load_instance_head,
)
from samft.weights.known import resolve_checkpoint
from samft.weights.thresholds import (
    META_DEFAULTS,
    OPTIONAL_KEYS,
    THRESHOLD_KEYS,
    check_thresholds,
    sidecar_thresholds,
)

log = logging.getLogger(__name__)

MAX_LABEL = np.iinfo(np.uint16).max  # labels.png is 16-bit
MODES = ("auto", "head", "grid")
SETTING_KEYS = (*THRESHOLD_KEYS, *OPTIONAL_KEYS)  # what resolve_thresholds resolves


def resolve_thresholds(
    checkpoint: str | Path,
    pred_iou_thresh: float | None = None,
    stability_score_thresh: float | None = None,
    covered_thresh: float | None = None,
    defaults: Mapping[str, float] | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """(thresholds, where each came from): a given value, else the checkpoint's sidecar
    (`automatic_thresholds`), else Meta's default: `defaults` (the model's
    `automatic_thresholds`; None: SAM's) and 1.0 for `covered_thresh` (no suppression)."""
    fallback = {**META_DEFAULTS, **(defaults or {})}
    given = {
        "pred_iou_thresh": pred_iou_thresh,
        "stability_score_thresh": stability_score_thresh,
        "covered_thresh": covered_thresh,
    }
    stored, sidecar = (None, None)
    if any(value is None for value in given.values()):
        stored, sidecar = sidecar_thresholds(checkpoint)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in SETTING_KEYS:
        if given[key] is not None:
            values[key], sources[key] = given[key], "given"
        elif stored is not None and stored.get(key) is not None:
            values[key], sources[key] = stored[key], f"sidecar {sidecar}"
        else:
            values[key], sources[key] = fallback[key], "Meta's default"
    checked = check_thresholds(values, "thresholds")
    return {key: checked[key] for key in SETTING_KEYS}, sources


def image_jobs(input_path: str | Path) -> list[tuple[Path, str]]:
    """(path, key) of every image under `input_path`, each checked to be a readable
    picture (its header), so that a stray file is named before the model loads."""
    try:
        images = list_images(input_path)
    except FileNotFoundError as err:
        raise DataError(str(err)) from None
    for path, _ in images:
        input_image_size(path, input_path)
    return images


def label_ids(records: Sequence[Mapping[str, Any]], shape: Sequence[int]) -> list[int | None]:
    """The id each record got in `records_to_labels(records, shape)`, None for a record
    that smaller masks cover completely.

    Records are painted by decreasing area, each over the larger ones, and the ids that
    stay visible are numbered 1..N in that order.
    """
    order = sorted(range(len(records)), key=lambda i: records[i]["area"], reverse=True)
    painted = np.zeros(tuple(int(v) for v in shape[:2]), dtype=np.int64)
    for rank, i in enumerate(order, 1):
        painted[segmentation_mask(records[i]["segmentation"])] = rank
    visible = np.zeros(len(order) + 1, dtype=bool)
    visible[np.unique(painted)] = True
    ids: list[int | None] = [None] * len(records)
    last = 0
    for rank, i in enumerate(order, 1):
        if visible[rank]:
            last += 1
            ids[i] = last
    return ids


def segment(
    checkpoint: str | Path,
    input: str | Path,
    output: str | Path,
    points_per_side: int = 32,
    points_per_batch: int = 64,
    pred_iou_thresh: float | None = None,
    stability_score_thresh: float | None = None,
    stability_score_offset: float = 1.0,
    box_nms_thresh: float = 0.7,
    covered_thresh: float | None = None,
    crop_n_layers: int = 0,
    crop_overlap_ratio: float = CROP_OVERLAP_RATIO,
    crop_n_points_downscale_factor: int = 1,
    min_mask_region_area: int = 0,
    variant: str | None = None,
    image_size: int | None = None,
    device: str = "auto",
    overlay: bool = True,
    mode: str = "auto",
    head_thresholds: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Instance masks for every image of `input` (see the module docstring for the files).

    The images and the output folder are checked before the model loads; the thresholds
    once it has (their defaults are its generation's).
    `head_thresholds`: the watershed's, each None (or absent) for the sidecar's / default.
    Returns the content of `segments.json`.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; expected one of {list(MODES)}")
    images = image_jobs(input)
    out_dir = prepare_output_dir(output, f"output={output}")
    checkpoint_path = resolve_checkpoint(checkpoint)
    head = load_instance_head(checkpoint_path) if mode != "grid" else None
    if mode == "head" and head is None:
        raise ValueError(
            f"mode=head: checkpoint={checkpoint} holds no instance head (train one with "
            "+experiment=litemedsam_instance, or use mode=grid)"
        )
    if head is not None:
        return _segment_with_head(
            checkpoint, checkpoint_path, head, images, out_dir, head_thresholds or {},
            variant, image_size, device, overlay,
        )  # fmt: skip
    sam = load_sam(checkpoint_path, variant=variant, image_size=image_size)
    sam = sam.to(resolve_device(device))
    thresholds, sources = resolve_thresholds(
        checkpoint, pred_iou_thresh, stability_score_thresh, covered_thresh,
        defaults=sam.automatic_thresholds,
    )  # fmt: skip
    log.info(
        "thresholds: %s",
        ", ".join(f"{key}={thresholds[key]} ({sources[key]})" for key in SETTING_KEYS),
    )
    settings = {
        "points_per_side": points_per_side,
        "points_per_batch": points_per_batch,
        **thresholds,
        "stability_score_offset": stability_score_offset,
        "box_nms_thresh": box_nms_thresh,
        "crop_n_layers": crop_n_layers,
        "crop_overlap_ratio": crop_overlap_ratio,
        "crop_n_points_downscale_factor": crop_n_points_downscale_factor,
        "min_mask_region_area": min_mask_region_area,
    }
    generator = AutomaticMaskGenerator(sam, output_mode="coco_rle", **settings)
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "mode": "grid",
        "image_size": sam.image_size,
        "settings": settings,
        "thresholds_source": sources,
        "images": [],
    }
    return _segment_all(generator, images, out_dir, overlay, report)


def _thresholds_text(generator: Any) -> list[str]:
    """The thresholds that decided which masks were kept: the grid's or the head's."""
    thresholds = getattr(generator, "thresholds", None)
    if thresholds is None:
        thresholds = {
            "pred_iou_thresh": generator.pred_iou_thresh,
            "stability_score_thresh": generator.stability_score_thresh,
        }
    return [f"{key}={float(value):g}" for key, value in thresholds.items()]


def _segment_with_head(
    checkpoint: str | Path,
    checkpoint_path: Path,
    head: Any,
    images: list[tuple[Path, str]],
    out_dir: Path,
    given: dict[str, Any],
    variant: str | None,
    image_size: int | None,
    device: str,
    overlay: bool,
) -> dict[str, Any]:
    """`segment` with the checkpoint's instance head (see the module docstring)."""
    stored = head_thresholds(checkpoint_path)  # the sidecar's, else the defaults
    values, sources = {}, {}
    for key in DEFAULT_THRESHOLDS:
        if given.get(key) is not None:
            values[key], sources[key] = given[key], "given"
        else:
            values[key], sources[key] = stored[key], "checkpoint's sidecar or default"
    values = check_head_thresholds(values, "head thresholds")
    log.info("instance head, thresholds: %s", values)
    sam = load_sam(checkpoint_path, variant=variant, image_size=image_size)
    sam = sam.to(resolve_device(device))
    segmenter = HeadInstanceSegmenter(sam, head, output_mode="coco_rle", **values)
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "mode": "head",
        "image_size": sam.image_size,
        "settings": values,
        "thresholds_source": sources,
        "images": [],
    }
    return _segment_all(segmenter, images, out_dir, overlay, report)


def _segment_all(
    segmenter: AutomaticMaskGenerator | HeadInstanceSegmenter,
    images: list[tuple[Path, str]],
    out_dir: Path,
    overlay: bool,
    report: dict[str, Any],
) -> dict[str, Any]:
    """Every image through `_segment_one` (a bar on a terminal, progress lines elsewhere),
    then `segments.json`: `report` with one entry per image."""
    progress = ProgressLines("segment", len(images)) if off_terminal() else None
    with logging_redirect_tqdm():
        for done, (path, key) in enumerate(
            tqdm(images, desc="segment", unit="image", disable=None), 1
        ):
            report["images"].append(_segment_one(segmenter, path, key, out_dir, overlay))
            if progress is not None:
                progress.update(done)
    write_json_atomic(out_dir / "segments.json", report)
    log.info("%d image(s) segmented into %s", len(images), out_dir)
    return report


def _segment_one(
    generator: AutomaticMaskGenerator | HeadInstanceSegmenter,
    path: Path,
    key: str,
    out_dir: Path,
    overlay: bool,
) -> dict[str, Any]:
    """Run one image and write its three files; returns its `segments.json` entry."""
    image = read_rgb(path)
    records = generator.generate(image)
    labels = records_to_labels(records, image.shape)
    if labels.max(initial=0) > MAX_LABEL:
        raise ValueError(f"{path}: {labels.max()} instances do not fit a 16-bit labels.png")
    ids = label_ids(records, labels.shape)
    order = sorted(range(len(records)), key=lambda i: records[i]["area"], reverse=True)
    folder = out_dir / Path(key).with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    files = {"labels": folder / "labels.png", "masks": folder / "masks.json"}
    write_image_atomic(files["labels"], labels.astype(np.uint16))
    masks = [{"id": ids[i], **records[i]} for i in order]
    height, width = image.shape[:2]
    write_json_atomic(
        files["masks"], {"image": key, "height": height, "width": width, "masks": masks}
    )
    if overlay:
        files["overlay"] = folder / "overlay.png"
        picture = draw_instances(image, labels)
        if not records:
            picture = write_note(picture, ["no mask kept:", *_thresholds_text(generator)])
        write_image_atomic(files["overlay"], picture)
    if not records:
        log.warning(
            "%s: no mask kept at %s; the model's scores may sit below Meta's defaults: search "
            "thresholds that fit it with `python -m samft eval mode=instance checkpoint=... "
            "data.val.*=... instance.write_thresholds_to=<export>.json`, or set them here "
            "(pred_iou_thresh=, stability_score_thresh=)",
            key,
            ", ".join(_thresholds_text(generator)),
        )
    instances = int(labels.max(initial=0))
    log.info("%s: %d mask(s), %d instance(s) in %s", key, len(records), instances, folder)
    return {
        "image": key,
        "height": height,
        "width": width,
        "n_masks": len(records),
        "n_instances": instances,
        **{name: file.relative_to(out_dir).as_posix() for name, file in files.items()},
    }

"""Fixtures of the data tests: the ct-organs masks read directly, and writers that turn
them into the other formats (SA-1B JSON, instance-id PNGs, semantic maps, COCO polygons),
so each reader is tested as the inverse of a writer on real data."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils


@pytest.fixture
def memory_cap():
    """Cap this process's address space at its current size + 4 GiB for one test, so that
    a regression letting pycocotools allocate tens of GB fails the test (a MemoryError or
    a crash of this process) instead of waking the kernel's OOM killer. Linux only."""
    try:
        import resource

        pages = int(Path("/proc/self/statm").read_text().split()[0])
    except (ImportError, OSError):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = pages * os.sysconf("SC_PAGE_SIZE") + 4 * 2**30
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@dataclass
class CtImage:
    stem: str
    path: Path
    image: np.ndarray  # H x W x 3 uint8
    names: list[str]  # mask file names, sorted
    labels: list[str]  # organ label per mask
    masks: np.ndarray  # N x H x W bool, in `names` order


@pytest.fixture(scope="session")
def ct_images(ct_organs: Path) -> list[CtImage]:
    """The five CT slices and their masks, read with PIL only (not with samft)."""
    out = []
    for path in sorted((ct_organs / "images").glob("*.png")):
        image = np.asarray(Image.open(path).convert("RGB"))
        files = sorted((ct_organs / "masks").glob(f"{path.stem}_*.png"))
        labels = [re.sub(r"_\d{3}$", "", f.stem[len(path.stem) + 1 :]) for f in files]
        masks = [np.asarray(Image.open(f)) > 0 for f in files]
        stack = np.stack(masks) if masks else np.zeros((0, *image.shape[:2]), dtype=bool)
        out.append(CtImage(path.stem, path, image, [f.name for f in files], labels, stack))
    return out


@pytest.fixture(scope="session")
def ct_classes(ct_images: list[CtImage]) -> dict[str, int]:
    """Organ label -> class value 1..n (sorted labels)."""
    names = sorted({label for ct in ct_images for label in ct.labels})
    return {name: i + 1 for i, name in enumerate(names)}


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


@pytest.fixture(scope="session")
def sa1b_dir(ct_images: list[CtImage], tmp_path_factory) -> Path:
    """An SA-1B style folder: <stem>.png + <stem>.json per CT slice."""
    root = tmp_path_factory.mktemp("sa1b")
    for k, ct in enumerate(ct_images):
        Image.fromarray(ct.image).save(root / f"{ct.stem}.png")
        h, w = ct.image.shape[:2]
        annotations = [
            {
                "id": i,
                "segmentation": _rle(mask),
                "area": int(mask.sum()),
                "bbox": [0, 0, 1, 1],
                "predicted_iou": 0.9,
                "stability_score": 0.95,
                "point_coords": [[0.0, 0.0]],
                "crop_box": [0, 0, w, h],
            }
            for i, mask in enumerate(ct.masks)
        ]
        info = {"image_id": k, "width": w, "height": h, "file_name": f"{ct.stem}.png"}
        (root / f"{ct.stem}.json").write_text(
            json.dumps({"image": info, "annotations": annotations})
        )
    return root


@pytest.fixture(scope="session")
def instance_dir(ct_images: list[CtImage], tmp_path_factory) -> Path:
    """Instance-id PNGs: 16-bit, ids 1000, 1001, ... (0 = background), one per CT slice."""
    root = tmp_path_factory.mktemp("instance")
    for ct in ct_images:
        ids = np.zeros(ct.image.shape[:2], dtype=np.uint16)
        for i, mask in enumerate(ct.masks):
            ids[mask] = 1000 + i
        Image.fromarray(ids).save(root / f"{ct.stem}_ids.png")
    return root


@pytest.fixture(scope="session")
def semantic_dir(ct_images: list[CtImage], ct_classes: dict[str, int], tmp_path_factory) -> Path:
    """Semantic label maps (8-bit, class value per organ, 0 = background)."""
    root = tmp_path_factory.mktemp("semantic")
    for ct in ct_images:
        labels = np.zeros(ct.image.shape[:2], dtype=np.uint8)
        for label, mask in zip(ct.labels, ct.masks, strict=True):
            labels[mask] = ct_classes[label]
        Image.fromarray(labels).save(root / f"{ct.stem}.png")
    return root


def polygons_of(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a mask as COCO polygons (x, y, x, y, ...)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


@pytest.fixture(scope="session")
def polygon_coco(ct_images: list[CtImage], ct_classes, ct_organs: Path, tmp_path_factory) -> Path:
    """COCO JSON of the CT slices with polygon segmentations; one crowd annotation in
    uncompressed RLE (the form COCO uses for crowds)."""
    root = tmp_path_factory.mktemp("polygons")
    images, annotations = [], []
    for k, ct in enumerate(ct_images, start=1):
        h, w = ct.image.shape[:2]
        images.append({"id": k, "file_name": f"images/{ct.stem}.png", "height": h, "width": w})
        for label, mask in zip(ct.labels, ct.masks, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": k,
                    "category_id": ct_classes[label],
                    "segmentation": polygons_of(mask),
                    "iscrowd": 0,
                }
            )
    # a crowd region in uncompressed RLE over the first slice's first mask
    first = ct_images[0].masks[0]
    crowd_rle = {"size": list(first.shape), "counts": _uncompressed_counts(first)}
    annotations.append(
        {
            "id": len(annotations) + 1,
            "image_id": 1,
            "category_id": 1,
            "segmentation": crowd_rle,
            "iscrowd": 1,
        }
    )
    categories = [{"id": v, "name": n} for n, v in ct_classes.items()]
    path = root / "polygons.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts: alternating run lengths in column-major order,
    starting with a (possibly empty) run of zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]

"""A small deterministic dataset of shapes, written in COCO format for the demo.

samft ships no real data, so the demo draws its own: smooth, slightly noisy backgrounds with a few
filled circles, rectangles, triangles and ellipses of random colours that may occlude one
another (each mask is what stays visible). It is written as PNGs plus COCO instance files
so the demo goes through the same COCO reader as users' data.

Determinism: every image has its own random stream seeded by (seed, split, index), drawn
with numpy's PCG64 using only uniform draws, and shapes are rasterised with plain numpy
arithmetic (+, -, *, /, sqrt; no trigonometry, no OpenCV drawing), so pixels and JSON are
the same on every machine. PNG bytes also match wherever the same zlib is used.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

log = logging.getLogger(__name__)

CATEGORIES = ("circle", "rectangle", "triangle", "ellipse")  # COCO ids 1..4 in this order
MARKER = ".samft_shapes.json"  # written last: its presence means the dataset is complete
FORMAT_VERSION = 3  # 3: calm backgrounds, so the tiny demo model learns in minutes
MIN_VISIBLE_AREA = 16  # shapes occluded down to fewer pixels are left out
SPLITS = ("train", "val")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """size x size x 3 float image: a smooth, mid-grey colour field.

    Kept calm on purpose: the demo trains a tiny SAM from scratch on a CPU in minutes, and
    busy textures (tried: stripes, checkers, strong noise) delay the moment it starts to
    separate objects from background by hundreds of steps.
    """
    cells = int(rng.integers(2, 4))
    coarse = rng.uniform(90, 170, size=(cells + 1, cells + 1, 3))
    t = np.arange(size, dtype=np.float64) * (cells / size)
    i0 = t.astype(np.int64)
    f = t - i0
    rows = coarse[i0] * (1 - f)[:, None, None] + coarse[i0 + 1] * f[:, None, None]
    return rows[:, i0] * (1 - f)[None, :, None] + rows[:, i0 + 1] * f[None, :, None]


def _unit_vector(rng: np.random.Generator) -> tuple[float, float]:
    """A random direction (cos, sin) made with sqrt only."""
    while True:
        c, s = rng.uniform(-1, 1, size=2)
        norm = c * c + s * s
        if 1e-4 < norm <= 1:
            root = np.sqrt(norm)
            return float(c / root), float(s / root)


def _shape_mask(
    rng: np.random.Generator, category: str, x: np.ndarray, y: np.ndarray, size: int
) -> np.ndarray:
    """size x size bool mask of one random shape; x, y are pixel-centre coordinate grids."""
    scale = rng.uniform(0.05, 0.25) * size  # half-extent: small to large objects
    cx, cy = rng.uniform(0.1 * size, 0.9 * size, size=2)
    cos, sin = _unit_vector(rng)
    # coordinates in the shape's rotated frame
    u = (x - cx) * cos + (y - cy) * sin
    v = -(x - cx) * sin + (y - cy) * cos
    if category == "circle":
        return u * u + v * v <= scale * scale
    if category == "rectangle":
        a, b = scale, scale * rng.uniform(0.3, 1.0)
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    if category == "ellipse":
        a, b = scale, scale * rng.uniform(0.25, 0.7)
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if category == "triangle":
        # three vertices around the centre, spread so the triangle is never a sliver
        corners = np.array([[0.0, -1.0], [0.87, 0.5], [-0.87, 0.5]]) * scale
        corners += rng.uniform(-0.3, 0.3, size=(3, 2)) * scale
        inside = []
        for (x0, y0), (x1, y1) in zip(corners, np.roll(corners, -1, axis=0), strict=True):
            inside.append((x1 - x0) * (v - y0) - (y1 - y0) * (u - x0))
        signs = np.stack(inside)
        return (signs >= 0).all(axis=0) | (signs <= 0).all(axis=0)
    raise ValueError(f"unknown shape category {category!r}, expected one of {CATEGORIES}")


def _draw_image(
    seed: int, split_index: int, image_index: int, size: int, max_shapes: int
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image (H x W x 3 uint8) and its visible objects as (category id, H x W bool mask)."""
    rng = np.random.default_rng([seed, split_index, image_index])
    image = _background(rng, size)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    labels = np.zeros((size, size), dtype=np.int64)  # 0 background, k = k-th shape
    categories = []
    for k in range(1, int(rng.integers(1, max_shapes + 1)) + 1):
        category = int(rng.integers(len(CATEGORIES)))
        mask = _shape_mask(rng, CATEGORIES[category], x, y, size)
        colour = rng.uniform(0, 255, size=3)
        shading = rng.uniform(-0.3, 0.3, size=2)  # a linear gradient across the shape
        fill = colour + ((x - size / 2) * shading[0] + (y - size / 2) * shading[1])[..., None]
        image[mask] = fill[mask]
        labels[mask] = k
        categories.append(category + 1)
    image += rng.uniform(-10, 10, size=image.shape)  # sensor-like noise everywhere
    objects = []
    for k, category_id in enumerate(categories, start=1):
        visible = labels == k
        if visible.sum() >= MIN_VISIBLE_AREA:
            objects.append((category_id, visible))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), objects


def _annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray) -> dict:
    """A COCO instance with compressed RLE, bbox [x, y, w, h] and area from the mask."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    bbox = [
        int(cols[0]),
        int(rows[0]),
        int(cols[-1] - cols[0] + 1),
        int(rows[-1] - rows[0] + 1),
    ]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()},
        "area": int(mask.sum()),
        "bbox": bbox,
        "iscrowd": 0,
    }


def _write_split(
    directory: Path, split: str, count: int, first_image_id: int, params: dict
) -> Path:
    """Draw and save one split's images; write its COCO file; return the file's path."""
    split_index = SPLITS.index(split)
    images, annotations = [], []
    for i in range(count):
        image_id = first_image_id + i
        file_name = f"{split}_{i:04d}.png"
        pixels, objects = _draw_image(
            params["seed"], split_index, i, params["image_size"], params["max_shapes"]
        )
        Image.fromarray(pixels).save(directory / "images" / file_name)
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": pixels.shape[0],
                "width": pixels.shape[1],
            }
        )
        for category_id, mask in objects:
            annotations.append(_annotation(len(annotations) + 1, image_id, category_id, mask))
    coco = {
        "info": {"description": f"samft synthetic shapes, {split} split", "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i, "name": name, "supercategory": "shape"}
            for i, name in enumerate(CATEGORIES, start=1)
        ],
    }
    path = directory / f"annotations_{split}.json"
    path.write_text(json.dumps(coco, separators=(",", ":")))
    return path


def _dataset_paths(root: Path) -> dict[str, Path]:
    return {
        "root": root,
        "images": root / "images",
        "train": root / "annotations_train.json",
        "val": root / "annotations_val.json",
    }


def _is_complete(root: Path, params: dict) -> bool:
    """True when `root` holds a finished dataset made with exactly these parameters."""
    try:
        if json.loads((root / MARKER).read_text()) != params:
            return False
    except (OSError, ValueError):
        return False
    paths = _dataset_paths(root)
    if not (paths["train"].is_file() and paths["val"].is_file()):
        return False
    for split, count in (("train", params["num_train"]), ("val", params["num_val"])):
        for i in range(count):
            if not (paths["images"] / f"{split}_{i:04d}.png").is_file():
                return False
    return True


def write_shapes_dataset(
    root: Path | str,
    num_train: int = 64,
    num_val: int = 16,
    image_size: int = 256,
    max_shapes: int = 4,
    seed: int = 0,
) -> dict[str, Path]:
    """Make sure `root` holds the shapes dataset for these parameters; build it if not.

    Returns at once when a complete dataset with the same parameters is there. Otherwise it
    draws the dataset into a temporary folder beside `root` and swaps it in with a rename,
    so an interrupted run never leaves a half-written dataset at `root`. It only replaces a
    folder it wrote itself (one holding its marker file) or an empty one.

    Layout: `root/images/{train,val}_NNNN.png`, `root/annotations_train.json`,
    `root/annotations_val.json` (file names relative to `images/`; image ids unique across
    the two splits; categories 1 circle, 2 rectangle, 3 triangle, 4 ellipse).

    Returns:
        {"root", "images", "train", "val"}: the folder, the image folder and the two
        annotation files.
    """
    root = Path(root)
    params = {
        "version": FORMAT_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": int(image_size),
        "max_shapes": int(max_shapes),
        "seed": int(seed),
    }
    minimums = {"num_train": 0, "num_val": 0, "image_size": 16, "max_shapes": 1}
    for key, minimum in minimums.items():
        if params[key] < minimum:
            raise ValueError(f"write_shapes_dataset: {key}={params[key]}, expected >= {minimum}")
    if _is_complete(root, params):
        return _dataset_paths(root)
    if root.exists() and not (root / MARKER).exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} exists, is not empty and is not a samft shapes dataset (no {MARKER}); "
            "pick another folder for the synthetic data or empty this one"
        )

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        (staging / "images").mkdir()
        _write_split(staging, "train", params["num_train"], 1, params)
        _write_split(staging, "val", params["num_val"], 1 + params["num_train"], params)
        (staging / MARKER).write_text(json.dumps(params, sort_keys=True))
        _swap_in(staging, root, params)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "generated synthetic shapes dataset (%d train, %d val images) in %s",
        params["num_train"],
        params["num_val"],
        root,
    )
    return _dataset_paths(root)


def _swap_in(staging: Path, root: Path, params: dict) -> None:
    """Move the finished `staging` folder to `root`, replacing an old or empty `root`."""
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        os.replace(root, old)
    try:
        os.replace(staging, root)
    except OSError:
        # another process finished first: keep its dataset if it is the one we want
        if not _is_complete(root, params):
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


ensure_shapes_dataset = write_shapes_dataset

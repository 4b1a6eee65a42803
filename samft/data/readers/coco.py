"""COCO instance annotations: polygons, RLE and crowd regions, decoded with pycocotools.

Crowd annotations (`iscrowd: 1`) mark groups of objects that were not separated, so no
single object can be prompted in them. They are indexed with `iscrowd=True` and the object
filter drops them with the reason "crowd", which the dataset statistics report.

The JSON is checked while it is indexed (`validate.py`, `rle.py`): required keys, unique
image and annotation ids, image sizes, polygon coordinates, boxes and RLE counts, so that a
bad value is a DataError naming the file and the entry, never a crash inside pycocotools.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from samft.data.errors import DataError
from samft.data.readers.base import ImageRecord, ObjectRecord, Reader, load_json, require
from samft.data.readers.rle import counts_strings, decode_rles, to_rle
from samft.data.readers.rle_counts import summarize_counts
from samft.data.readers.validate import (
    as_int,
    check_area,
    check_bbox,
    check_id,
    check_image_size,
)


def read_categories(data: dict, path: Path) -> dict[int, str]:
    """Category id -> name of a COCO file's optional `categories` list."""
    categories = data.get("categories", [])
    if not isinstance(categories, list):
        raise DataError(f"{path}: 'categories' must be a JSON list")
    names: dict[int, str] = {}
    for i, category in enumerate(categories):
        where = f"{path}: categories[{i}]"
        value = require(category, "id", where)
        category_id = as_int(value)
        if category_id is None:
            raise DataError(f"{where}: id is {value!r}; expected an integer")
        if category_id in names:
            raise DataError(f"{where}: category id {category_id} is used twice; ids must be unique")
        names[category_id] = str(category.get("name", category_id))
    return names


def _category_id(ann: dict, where: str) -> int:
    value = ann.get("category_id", -1)
    category_id = as_int(value)
    if category_id is None:
        raise DataError(f"{where}: category_id is {value!r}; expected an integer")
    return category_id


class CocoReader(Reader):
    """Images and instance masks of one COCO `instances_*.json` file.

    Args:
        annotations: the COCO JSON file.
        images: folder that the images' `file_name` entries are relative to; by default the
            JSON file's folder.
        split: keep only images whose (non-standard) `"split"` field equals this, for files
            that hold several splits in one.
    """

    format = "coco"

    def __init__(
        self, annotations: str | Path, images: str | Path | None = None, split: str | None = None
    ) -> None:
        super().__init__()
        self.annotations = Path(annotations)
        self.images = Path(images) if images is not None else self.annotations.parent
        self.split = split
        self.categories: dict[int, str] = {}
        self.records = self._scan()

    def _scan(self) -> list[ImageRecord]:
        path = self.annotations
        data = load_json(path)
        images = require(data, "images", str(path))
        annotations = require(data, "annotations", str(path))
        if not isinstance(images, list) or not isinstance(annotations, list):
            raise DataError(f"{path}: 'images' and 'annotations' must be JSON lists")
        self.categories = read_categories(data, path)
        by_id = self._scan_images(images)
        if self.split is not None and all(record is None for record in by_id.values()):
            raise DataError(f'{path}: no image has "split": {self.split!r}')

        first_index: dict[Any, int] = {}
        summaries = summarize_counts(counts_strings(annotations))  # all RLE strings at once
        for i, ann in enumerate(annotations):
            ann_id = ann.get("id") if isinstance(ann, dict) else "?"
            where = f"{path}: annotations[{i}] (id {ann_id})"
            image_id = check_id(require(ann, "image_id", where), "image_id", where)
            if ann_id is not None:
                check_id(ann_id, "id", where)
                if ann_id in first_index:
                    raise DataError(
                        f"{where}: annotation id {ann_id} is also annotations"
                        f"[{first_index[ann_id]}]'s; give each annotation its own id"
                    )
                first_index[ann_id] = i
            if image_id not in by_id:
                raise DataError(f"{where} points at image_id {image_id}, which is not in 'images'")
            record = by_id[image_id]
            if record is None:  # the image belongs to another split
                continue
            segmentation = require(ann, "segmentation", where)
            h, w = record.height, record.width
            if "bbox" in ann:
                check_bbox(ann["bbox"], h, w, where)
            rle, area = to_rle(segmentation, h, w, where, summaries[i])
            if isinstance(segmentation, dict) and "area" in ann:
                check_area(ann["area"], area, where)  # polygons' area is not the pixel count
            record.objects.append(
                ObjectRecord(
                    area=area,
                    category_id=_category_id(ann, where),
                    iscrowd=bool(ann.get("iscrowd", 0)),
                    key=rle,
                )
            )
        return [record for record in by_id.values() if record is not None]

    def _scan_images(self, images: list) -> dict[Any, ImageRecord | None]:
        """Image id -> record, or None for the images of another split."""
        path = self.annotations
        by_id: dict[Any, ImageRecord | None] = {}
        first_index: dict[Any, int] = {}
        for i, image in enumerate(images):
            where = f"{path}: images[{i}]"
            image_id = check_id(require(image, "id", where), "id", where)
            if image_id in first_index:
                raise DataError(
                    f"{where}: image id {image_id} is also images[{first_index[image_id]}]'s; "
                    "their annotations could not be told apart: give each image its own id"
                )
            first_index[image_id] = i
            where = f"{where} (id {image_id})"
            if self.split is not None and image.get("split") != self.split:
                by_id[image_id] = None
                continue
            file_path = self.images / str(require(image, "file_name", where))
            if not file_path.is_file():
                raise DataError(f"{where}: image file not found: {file_path}")
            height, width = check_image_size(image, where)
            by_id[image_id] = ImageRecord(
                image_id=str(image_id), path=file_path, height=height, width=width, source=path
            )
        return by_id

    def load_masks(self, record: ImageRecord, indices: Sequence[int]) -> np.ndarray:
        """N x H x W bool masks of the chosen objects."""
        rles = [record.objects[i].key for i in indices]
        where = f"{record.source}: image id {record.image_id}"
        return decode_rles(rles, record.height, record.width, where)

"""COCO instance annotations: polygons, RLE and crowd regions, decoded with pycocotools.

Crowd annotations (`iscrowd: 1`) mark groups of objects that were not separated, so no
single object can be prompted in them. They are indexed with `iscrowd=True` and the object
filter drops them with the reason "crowd", which the dataset statistics report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from samft.data.errors import DataError
from samft.data.readers.base import ImageRecord, ObjectRecord, Reader, load_json, require
from samft.data.readers.rle import decode_rles, rle_area, to_rle


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
        for category in data.get("categories", []):
            self.categories[int(category["id"])] = str(category.get("name", category["id"]))

        by_id: dict[int, ImageRecord] = {}
        for i, image in enumerate(images):
            where = f"{path}: images[{i}]"
            image_id = require(image, "id", where)
            if self.split is not None and image.get("split") != self.split:
                continue
            file_path = self.images / str(require(image, "file_name", where))
            if not file_path.is_file():
                raise DataError(f"{where} (id {image_id}): image file not found: {file_path}")
            by_id[image_id] = ImageRecord(
                image_id=str(image_id),
                path=file_path,
                height=int(require(image, "height", where)),
                width=int(require(image, "width", where)),
                source=path,
            )
        known_ids = {image.get("id") for image in images if isinstance(image, dict)}
        if self.split is not None and not by_id:
            raise DataError(f'{path}: no image has "split": {self.split!r}')

        for i, ann in enumerate(annotations):
            ann_id = ann.get("id") if isinstance(ann, dict) else "?"
            where = f"{path}: annotations[{i}] (id {ann_id})"
            image_id = require(ann, "image_id", where)
            if image_id not in known_ids:
                raise DataError(f"{where} points at image_id {image_id}, which is not in 'images'")
            record = by_id.get(image_id)
            if record is None:  # the image belongs to another split
                continue
            rle = to_rle(require(ann, "segmentation", where), record.height, record.width, where)
            record.objects.append(
                ObjectRecord(
                    area=rle_area(rle),
                    category_id=int(ann.get("category_id", -1)),
                    iscrowd=bool(ann.get("iscrowd", 0)),
                    key=rle,
                )
            )
        return list(by_id.values())

    def load_masks(self, record: ImageRecord, indices: Sequence[int]) -> np.ndarray:
        """N x H x W bool masks of the chosen objects."""
        rles = [record.objects[i].key for i in indices]
        return decode_rles(rles, record.height, record.width)

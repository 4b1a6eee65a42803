"""SA-1B: one JSON per image (`{"image": {...}, "annotations": [...]}`) with RLE masks.

SA-1B images carry about a hundred masks each, so their RLE strings are not kept in
memory: the index holds only the areas, and a sample re-reads its image's JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from samft.data.errors import DataError
from samft.data.readers.base import ImageRecord, ObjectRecord, Reader, load_json, require
from samft.data.readers.rle import decode_rles, rle_area, to_rle


class Sa1bReader(Reader):
    """Every `*.json` of an SA-1B folder (e.g. one extracted `sa_000000.tar`).

    Args:
        root: folder holding the per-image JSON files.
        images: folder of the images named in `image.file_name`; by default `root`.
    """

    format = "sa1b"

    def __init__(self, root: str | Path, images: str | Path | None = None) -> None:
        super().__init__()
        self.root = Path(root)
        self.images = Path(images) if images is not None else self.root
        if not self.root.is_dir():
            raise DataError(f"SA-1B folder not found: {self.root}")
        self.records = [self._scan_file(path) for path in sorted(self.root.glob("*.json"))]

    def _read(self, path: Path) -> tuple[dict, list]:
        data = load_json(path)
        image = require(data, "image", str(path))
        annotations = require(data, "annotations", str(path))
        if not isinstance(annotations, list):
            raise DataError(f"{path}: 'annotations' must be a JSON list")
        return image, annotations

    def _scan_file(self, path: Path) -> ImageRecord:
        image, annotations = self._read(path)
        where = f"{path}: image"
        file_path = self.images / str(require(image, "file_name", where))
        if not file_path.is_file():
            raise DataError(f"{path}: image file not found: {file_path}")
        record = ImageRecord(
            image_id=str(image.get("image_id", path.stem)),
            path=file_path,
            height=int(require(image, "height", where)),
            width=int(require(image, "width", where)),
            source=path,
        )
        for i, ann in enumerate(annotations):
            where = f"{path}: annotations[{i}]"
            rle = to_rle(require(ann, "segmentation", where), record.height, record.width, where)
            record.objects.append(ObjectRecord(area=rle_area(rle), key=i))
        return record

    def load_masks(self, record: ImageRecord, indices: Sequence[int]) -> np.ndarray:
        """N x H x W bool masks of the chosen objects, re-read from the image's JSON."""
        assert record.source is not None
        _, annotations = self._read(record.source)
        rles = []
        for i in indices:
            where = f"{record.source}: annotations[{record.objects[i].key}]"
            segmentation = annotations[record.objects[i].key]["segmentation"]
            rles.append(to_rle(segmentation, record.height, record.width, where))
        return decode_rles(rles, record.height, record.width)

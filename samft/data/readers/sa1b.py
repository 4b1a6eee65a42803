"""SA-1B: one JSON per image (`{"image": {...}, "annotations": [...]}`) with RLE masks.

SA-1B images carry about a hundred masks each, so their RLE strings are not kept in
memory: the index holds only the areas, and a sample re-reads its image's JSON. Indexing
checks each file like the COCO reader does (image size, RLE counts against H*W, `area`
against the RLE, `bbox`), so a corrupt mask is a DataError naming file and annotation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from samft.data.errors import DataError
from samft.data.readers.base import ImageRecord, ObjectRecord, Reader, load_json, require
from samft.data.readers.rle import counts_strings, decode_rles, to_rle
from samft.data.readers.rle_counts import summarize_counts
from samft.data.readers.validate import check_area, check_bbox, check_image_size


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
        height, width = check_image_size(image, where)
        record = ImageRecord(
            image_id=str(image.get("image_id", path.stem)),
            path=file_path,
            height=height,
            width=width,
            source=path,
        )
        summaries = summarize_counts(counts_strings(annotations))  # all RLE strings at once
        for i, ann in enumerate(annotations):
            where = self._where(path, i, ann)
            segmentation = require(ann, "segmentation", where)
            _, area = to_rle(segmentation, height, width, where, summaries[i])
            if "area" in ann:
                check_area(ann["area"], area, where)
            if "bbox" in ann:
                check_bbox(ann["bbox"], height, width, where)
            record.objects.append(ObjectRecord(area=area, key=i))
        return record

    @staticmethod
    def _where(path: Path, index: int, ann: object) -> str:
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        return f"{path}: annotations[{index}]" + ("" if ann_id is None else f" (id {ann_id})")

    def load_masks(self, record: ImageRecord, indices: Sequence[int]) -> np.ndarray:
        """N x H x W bool masks of the chosen objects, re-read from the image's JSON."""
        assert record.source is not None
        _, annotations = self._read(record.source)
        rles = []
        for i in indices:
            k = record.objects[i].key
            ann = annotations[k] if k < len(annotations) else None
            where = self._where(record.source, k, ann)
            segmentation = require(ann, "segmentation", where)
            rles.append(to_rle(segmentation, record.height, record.width, where)[0])
        return decode_rles(rles, record.height, record.width, str(record.source))

"""What every reader produces: an index of images and objects, then pixels on demand.

A reader scans its annotations once, at construction, into `ImageRecord`s that hold each
object's area but no pixels. The dataset filters and samples objects from that index and
asks the reader to decode only the images and masks it needs for one sample.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from samft.data.errors import DataError
from samft.data.images import read_rgb


@dataclass(frozen=True)
class ObjectRecord:
    """One annotated object before decoding.

    `area` is its pixel count in the original image; `key` is whatever the reader needs to
    decode the mask (an RLE, a file, a label value) and means nothing outside the reader.
    """

    area: int
    category_id: int = -1
    iscrowd: bool = False
    key: Any = None


@dataclass
class ImageRecord:
    """One image of a dataset: where it is, its size (H, W) and its objects.

    `source` is the annotation file that described it, named in error messages.
    """

    image_id: str
    path: Path
    height: int
    width: int
    objects: list[ObjectRecord] = field(default_factory=list)
    source: Path | None = None


@dataclass
class LoadedImage:
    """Decoded pixels of one image: H x W x 3 uint8 RGB and N x H x W bool masks."""

    record: ImageRecord
    image: np.ndarray
    masks: np.ndarray
    object_indices: list[int]


class Reader(ABC):
    """Base class of the format readers; subclasses fill `records` and decode masks."""

    format: str = ""

    def __init__(self) -> None:
        self.records: list[ImageRecord] = []

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> LoadedImage:
        record = self.records[index]
        return self.load(record, range(len(record.objects)))

    def __iter__(self) -> Iterator[LoadedImage]:
        for index in range(len(self)):
            yield self[index]

    @abstractmethod
    def load_masks(self, record: ImageRecord, indices: Sequence[int]) -> np.ndarray:
        """Decode the objects `indices` of `record` as N x H x W bool masks."""

    def load_image(self, record: ImageRecord) -> np.ndarray:
        """H x W x 3 uint8 RGB pixels of `record`, checked against its annotated size."""
        image = read_rgb(record.path)
        if image.shape[:2] != (record.height, record.width):
            described = f" as described in {record.source}" if record.source else ""
            raise DataError(
                f"image file {record.path} is {image.shape[0]}x{image.shape[1]} (HxW) but its "
                f"annotations expect {record.height}x{record.width}{described}"
            )
        return image

    def load(self, record: ImageRecord, indices: Sequence[int]) -> LoadedImage:
        """Decode one image and the chosen objects' masks."""
        indices = list(indices)
        image = self.load_image(record)
        if indices:
            masks = self.load_masks(record, indices)
        else:
            masks = np.zeros((0, record.height, record.width), dtype=bool)
        if masks.shape[1:] != image.shape[:2]:
            raise DataError(
                f"masks of image {record.path} are {masks.shape[1]}x{masks.shape[2]} (HxW) "
                f"but the image is {image.shape[0]}x{image.shape[1]}; source: {record.source}"
            )
        return LoadedImage(record=record, image=image, masks=masks, object_indices=indices)


def load_json(path: Path) -> Any:
    """Parse a JSON file, naming it in the error when it is missing or malformed."""
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"malformed JSON in {path}: {exc}") from exc


def require(mapping: Any, key: str, where: str) -> Any:
    """`mapping[key]`, or a DataError saying which key is missing where."""
    if not isinstance(mapping, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(mapping).__name__}")
    if key not in mapping:
        raise DataError(f"{where}: missing key {key!r}")
    return mapping[key]

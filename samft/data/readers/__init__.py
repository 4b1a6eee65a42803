"""Format readers (COCO, SA-1B, folders) and `build_reader`, which picks one from a spec."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from samft.data.errors import DataError
from samft.data.readers.base import ImageRecord, LoadedImage, ObjectRecord, Reader
from samft.data.readers.coco import CocoReader
from samft.data.readers.folder import FolderReader
from samft.data.readers.sa1b import Sa1bReader

READERS: dict[str, type[Reader]] = {"coco": CocoReader, "sa1b": Sa1bReader, "folder": FolderReader}

__all__ = [
    "READERS",
    "CocoReader",
    "FolderReader",
    "ImageRecord",
    "LoadedImage",
    "ObjectRecord",
    "Reader",
    "Sa1bReader",
    "build_reader",
]


def build_reader(spec: Mapping[str, Any] | Reader, name: str = "dataset") -> Reader:
    """A reader from a dataset spec: `{"format": "coco", <that reader's arguments>}`.

    `name` (e.g. "train") is used in error messages. A ready Reader is returned as is.
    """
    if isinstance(spec, Reader):
        return spec
    if not isinstance(spec, Mapping):
        raise DataError(f"{name}: expected a dataset spec mapping, got {type(spec).__name__}")
    options = dict(spec)
    fmt = options.pop("format", None)
    if fmt not in READERS:
        raise DataError(f"{name}.format = {fmt!r}; expected one of {sorted(READERS)}")
    reader_cls = READERS[fmt]
    accepted = set(inspect.signature(reader_cls.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise DataError(
            f"{name}: unknown key(s) {unknown} for format {fmt!r}; "
            f"expected among {sorted(accepted)}"
        )
    return reader_cls(**options)

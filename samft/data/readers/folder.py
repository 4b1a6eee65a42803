"""Plain folders: images beside instance-id maps, per-object binary masks or label maps.

`mask_type` says how the `masks` folder describes the objects of `images/<stem>.<ext>`:

- "instance": `masks/<stem><suffix>.png` (or .tif), one integer id per object (0 =
  background);
- "per_object": one binary mask per object, either `masks/<stem>/*.png` or
  `masks/<stem>_*.png` (when image stems prefix each other, a file goes to the longest);
- "semantic": `masks/<stem><suffix>.png` (or .tif), one class value per pixel; each class
  ("classes") or each 8-connected region of a class ("components") becomes an object.

Masks may be PNG, TIFF (8/16/32-bit) or BMP; JPEG/WebP masks are refused by name, as lossy
compression changes label values (`folder_files.py`). Values in `background` are never
objects; `ignore_index` (255 by default, VOC's "void") marks unlabelled pixels.

Binary 0/255 maps: a map whose only value besides background is 255 is a binary mask saved
the usual way, and its 255 region is read as the object (instance: one object; semantic:
class 255) even though 255 is `ignore_index`: otherwise every such image would silently
lose its object. That holds unless some other map of the dataset uses 255 beside object ids
(VOC-style void borders): then 255 is void everywhere and a 0/255 map has no objects.

A mask file that matches no image is an error, like a COCO annotation pointing at a missing
image; a missing label map is an error that names the layout found instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from samft.data.errors import DataError
from samft.data.images import image_size, read_label_map
from samft.data.readers.base import ImageRecord, ObjectRecord, Reader
from samft.data.readers.folder_files import map_files, per_object_files

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_TYPES = ("instance", "per_object", "semantic")
SEMANTIC_OBJECTS = ("components", "classes")


def _components(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected regions of an H x W bool map: (label map, area of labels 1..n)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        binary.astype(np.uint8), connectivity=8
    )
    return labels, stats[1:count, cv2.CC_STAT_AREA]


class FolderReader(Reader):
    """Images in one folder, their objects described by files in another (see module doc).

    Args:
        images: folder of images (jpg, png, bmp, tif, webp); the file stem is the image id.
        masks: folder of mask files (png, tif, bmp).
        mask_type: "instance", "per_object" or "semantic".
        semantic_objects: for "semantic": "components" or "classes".
        background: label values that are not objects.
        ignore_index: label value of unlabelled pixels, or None. A 0/255 binary map still
            reads 255 as its object (see module doc).
        mask_suffix: for "instance" and "semantic": mask file = `<stem><mask_suffix>.png`
            (or .tif, .tiff, .bmp).
    """

    format = "folder"
    BINARY_VALUE = 255

    def __init__(
        self,
        images: str | Path,
        masks: str | Path,
        mask_type: str = "instance",
        semantic_objects: str = "components",
        background: Sequence[int] = (0,),
        ignore_index: int | None = 255,
        mask_suffix: str = "",
    ) -> None:
        super().__init__()
        if mask_type not in MASK_TYPES:
            raise DataError(
                f"folder dataset: mask_type={mask_type!r}; expected one of {MASK_TYPES}"
            )
        if semantic_objects not in SEMANTIC_OBJECTS:
            raise DataError(
                f"folder dataset: semantic_objects={semantic_objects!r}; "
                f"expected one of {SEMANTIC_OBJECTS}"
            )
        self.images, self.masks = Path(images), Path(masks)
        for name, folder in (("images", self.images), ("masks", self.masks)):
            if not folder.is_dir():
                raise DataError(f"folder dataset: {name} folder not found: {folder}")
        self.mask_type, self.semantic_objects = mask_type, semantic_objects
        self.background = {int(v) for v in background}
        self.not_objects = set(self.background)
        if ignore_index is not None:
            self.not_objects.add(int(ignore_index))
        # 255 may be a binary mask's object rather than void (module doc)
        self._binary_possible = ignore_index == self.BINARY_VALUE and (
            self.BINARY_VALUE not in self.background
        )
        self.mask_suffix = mask_suffix
        self.binary_maps = 0  # 0/255 maps whose 255 region was read as an object
        image_paths = self._image_paths()
        if mask_type == "per_object":
            mask_files = per_object_files(image_paths, self.images, self.masks)
            self.records = [
                self._scan_per_object(stem, path, mask_files[stem])
                for stem, path in image_paths.items()
            ]
        else:
            maps = map_files(image_paths, self.images, self.masks, mask_suffix, mask_type)
            self.records = self._scan_maps(image_paths, maps)

    def _image_paths(self) -> dict[str, Path]:
        paths: dict[str, Path] = {}
        for path in sorted(self.images.iterdir()):
            if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
                continue
            if path.stem in paths:
                raise DataError(
                    f"two images share the id {path.stem!r}: {paths[path.stem]} and {path}"
                )
            paths[path.stem] = path
        return paths

    def _check_size(self, mask: np.ndarray, mask_path: Path, image_path: Path, hw: tuple) -> None:
        if mask.shape != hw:
            raise DataError(
                f"mask file {mask_path} is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image "
                f"{image_path} is {hw[0]}x{hw[1]}"
            )

    def _scan_per_object(self, stem: str, image_path: Path, paths: list[Path]) -> ImageRecord:
        hw = image_size(image_path)
        record = ImageRecord(image_id=stem, path=image_path, height=hw[0], width=hw[1])
        for path in paths:
            binary = read_label_map(path) > 0
            self._check_size(binary, path, image_path, hw)
            record.objects.append(ObjectRecord(area=int(binary.sum()), key=path))
        return record

    def _scan_maps(self, image_paths: dict[str, Path], maps: dict[str, Path]) -> list[ImageRecord]:
        """Index every label map; 255 regions of 0/255 maps are kept aside until all maps
        are seen, then become objects unless another map uses 255 as void."""
        records, binary = [], []
        void_example: Path | None = None
        for stem, image_path in image_paths.items():
            hw = image_size(image_path)
            path = maps[stem]
            record = ImageRecord(stem, image_path, hw[0], hw[1], source=path)
            labels = read_label_map(path)
            self._check_size(labels, path, image_path, hw)
            values, counts = np.unique(labels, return_counts=True)
            found = dict(zip(values.tolist(), counts.tolist(), strict=True))
            for value, count in found.items():
                if value not in self.not_objects:
                    record.objects.extend(self._objects_of(labels, value, count))
            if self._binary_possible and self.BINARY_VALUE in found:
                if set(found) - self.background == {self.BINARY_VALUE}:
                    objects = self._objects_of(labels, self.BINARY_VALUE, found[self.BINARY_VALUE])
                    binary.append((record, objects))
                else:
                    void_example = void_example or path
            records.append(record)
        if binary and void_example is None:
            for record, objects in binary:
                record.objects.extend(objects)
            self.binary_maps = len(binary)
            log.info(
                "%s: %d mask files hold only 0 and 255 (e.g. %s): read 255 as the object, "
                "not as ignore_index",
                self.masks,
                len(binary),
                binary[0][0].source,
            )
        elif binary:
            log.info(
                "%s: 255 is void (ignore_index) as in %s, so %d maps holding only 0 and 255 "
                "(e.g. %s) have no objects",
                self.masks,
                void_example,
                len(binary),
                binary[0][0].source,
            )
        return records

    def _objects_of(self, labels: np.ndarray, value: int, count: int) -> list[ObjectRecord]:
        """The objects that label `value` (covering `count` pixels) stands for."""
        if self.mask_type == "instance":
            return [ObjectRecord(area=count, key=value)]
        if self.semantic_objects == "classes":
            return [ObjectRecord(area=count, category_id=value, key=value)]
        _, areas = _components(labels == value)
        return [
            ObjectRecord(area=int(area), category_id=value, key=(value, k))
            for k, area in enumerate(areas.tolist(), start=1)
        ]

    def load_masks(self, record: ImageRecord, indices: Sequence[int]) -> np.ndarray:
        """N x H x W bool masks of the chosen objects."""
        keys = [record.objects[i].key for i in indices]
        hw = (record.height, record.width)
        if not keys:
            return np.zeros((0, *hw), dtype=bool)
        if self.mask_type == "per_object":
            masks = []
            for path in keys:
                binary = read_label_map(path) > 0
                self._check_size(binary, path, record.path, hw)
                masks.append(binary)
            return np.stack(masks)
        assert record.source is not None
        labels = read_label_map(record.source)
        self._check_size(labels, record.source, record.path, hw)
        if self.mask_type == "instance" or self.semantic_objects == "classes":
            return labels[None] == np.asarray(keys, dtype=np.int64)[:, None, None]
        components: dict[int, np.ndarray] = {}
        masks = []
        for value, k in keys:
            if value not in components:
                components[value] = _components(labels == value)[0]
            masks.append(components[value] == k)
        return np.stack(masks)

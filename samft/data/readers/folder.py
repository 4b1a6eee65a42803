"""Plain folders: images beside instance-id maps, per-object binary masks or label maps.

`mask_type` says how the `masks` folder describes the objects of `images/<stem>.<ext>`:

- "instance": `masks/<stem><suffix>.png`, one integer id per object (0 = background);
- "per_object": one binary PNG per object, either `masks/<stem>/*.png` or
  `masks/<stem>_*.png` (when image stems prefix each other, a file goes to the longest);
- "semantic": `masks/<stem><suffix>.png`, one class value per pixel; each class
  ("classes") or each 8-connected region of a class ("components") becomes an object.

Values in `background` are never objects; `ignore_index` (255 by default, VOC's "void")
marks unlabelled pixels. A mask file that matches no image is an error, like a COCO
annotation pointing at a missing image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from samft.data.errors import DataError
from samft.data.images import image_size, read_label_map
from samft.data.readers.base import ImageRecord, ObjectRecord, Reader

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
        masks: folder of mask files.
        mask_type: "instance", "per_object" or "semantic".
        semantic_objects: for "semantic": "components" or "classes".
        background: label values that are not objects.
        ignore_index: label value of unlabelled pixels, or None.
        mask_suffix: for "instance" and "semantic": mask file = `<stem><mask_suffix>.png`.
    """

    format = "folder"

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
        self.not_objects = {int(v) for v in background}
        if ignore_index is not None:
            self.not_objects.add(int(ignore_index))
        self.mask_suffix = mask_suffix
        image_paths = self._image_paths()
        if mask_type == "per_object":
            mask_files = self._per_object_files(image_paths)
        else:
            mask_files = self._map_files(image_paths)
        self.records = [
            self._scan(stem, path, mask_files[stem]) for stem, path in image_paths.items()
        ]

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

    def _map_files(self, image_paths: dict[str, Path]) -> dict[str, list[Path]]:
        """One label map per image; every map must belong to an image."""
        ending = f"{self.mask_suffix}.png"
        expected = {stem: self.masks / f"{stem}{ending}" for stem in image_paths}
        for stem, path in expected.items():
            if not path.is_file():
                raise DataError(f"mask file not found for image {image_paths[stem]}: {path}")
        owned = set(expected.values())
        for path in sorted(self.masks.glob(f"*{ending}")):
            if path not in owned:
                raise DataError(f"mask file {path} matches no image in {self.images}")
        return {stem: [path] for stem, path in expected.items()}

    def _per_object_files(self, image_paths: dict[str, Path]) -> dict[str, list[Path]]:
        """Binary masks per image from `<stem>/` subfolders or `<stem>_*.png` names."""
        files: dict[str, list[Path]] = {stem: [] for stem in image_paths}
        by_length = sorted(image_paths, key=len, reverse=True)
        for path in sorted(self.masks.iterdir()):
            if path.is_dir():
                if path.name not in files:
                    raise DataError(f"mask folder {path} matches no image in {self.images}")
                files[path.name].extend(sorted(path.glob("*.png")))
            elif path.suffix.lower() == ".png":
                owner = next((s for s in by_length if path.name.startswith(f"{s}_")), None)
                if owner is None:
                    raise DataError(f"mask file {path} matches no image in {self.images}")
                files[owner].append(path)
        return files

    def _check_size(self, mask: np.ndarray, mask_path: Path, image_path: Path, hw: tuple) -> None:
        if mask.shape != hw:
            raise DataError(
                f"mask file {mask_path} is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image "
                f"{image_path} is {hw[0]}x{hw[1]}"
            )

    def _scan(self, stem: str, image_path: Path, mask_paths: list[Path]) -> ImageRecord:
        hw = image_size(image_path)
        record = ImageRecord(image_id=stem, path=image_path, height=hw[0], width=hw[1])
        if self.mask_type == "per_object":
            for path in mask_paths:
                binary = read_label_map(path) > 0
                self._check_size(binary, path, image_path, hw)
                record.objects.append(ObjectRecord(area=int(binary.sum()), key=path))
            return record
        (path,) = mask_paths
        record.source = path
        labels = read_label_map(path)
        self._check_size(labels, path, image_path, hw)
        values, counts = np.unique(labels, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            if value in self.not_objects:
                continue
            if self.mask_type == "instance":
                record.objects.append(ObjectRecord(area=count, key=value))
            elif self.semantic_objects == "classes":
                record.objects.append(ObjectRecord(area=count, category_id=value, key=value))
            else:
                _, areas = _components(labels == value)
                for k, area in enumerate(areas.tolist(), start=1):
                    record.objects.append(
                        ObjectRecord(area=int(area), category_id=value, key=(value, k))
                    )
        return record

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

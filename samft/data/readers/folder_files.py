"""Which mask files of a folder dataset belong to which image, and what to say when none do.

Masks are read from PNG, TIFF (8/16/32-bit) and BMP files. JPEG and WebP files are refused
by name: lossy compression changes label values at object edges, so ids and binary masks
cannot be trusted. A mask file that matches no image is an error, and so is an image whose
label map is missing: the message says which layout the masks folder seems to have instead
and which option (`mask_type`, `mask_suffix`) reads it.
"""

from __future__ import annotations

from pathlib import Path

from samft.data.errors import DataError

MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp")
LOSSY_EXTENSIONS = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WebP"}
LAYOUTS = (
    "mask_type=instance (object ids) or semantic (class values): one map "
    "<masks>/<stem><mask_suffix>.png (or .tif); per_object: <masks>/<stem>/*.png or "
    "<masks>/<stem>_*.png, one binary mask per object"
)


def refuse_lossy(path: Path) -> None:
    """Raise a DataError for a JPEG/WebP mask file: its label values are not reliable."""
    kind = LOSSY_EXTENSIONS.get(path.suffix.lower(), "JPEG")
    raise DataError(
        f"mask file {path} is {kind}: lossy compression changes label values at object edges, "
        "so the masks cannot be trusted; save masks as PNG or TIFF"
    )


def is_mask_file(path: Path) -> bool:
    """True for a PNG/TIFF/BMP file; refuses JPEG/WebP; False for anything else (README,
    hidden files such as .DS_Store)."""
    if path.name.startswith(".") or not path.is_file():
        return False
    suffix = path.suffix.lower()
    if suffix in LOSSY_EXTENSIONS:
        refuse_lossy(path)
    return suffix in MASK_EXTENSIONS


def _by_base(masks: Path) -> dict[str, list[Path]]:
    """Mask and lossy files directly in `masks`, by name without extension."""
    found: dict[str, list[Path]] = {}
    for path in sorted(masks.iterdir()):
        suffix = path.suffix.lower()
        if path.name.startswith(".") or not path.is_file():
            continue
        if suffix in MASK_EXTENSIONS or suffix in LOSSY_EXTENSIONS:
            found.setdefault(path.name[: -len(path.suffix)], []).append(path)
    return found


def map_files(
    images: dict[str, Path], image_dir: Path, masks: Path, suffix: str, mask_type: str
) -> dict[str, Path]:
    """One label map `<masks>/<stem><suffix>.<ext>` per image (stem -> image file in
    `image_dir`); every map must belong to an image."""
    by_base = _by_base(masks)
    owned = {f"{stem}{suffix}" for stem in images}
    found: dict[str, Path] = {}
    for stem, image in images.items():
        candidates = by_base.get(f"{stem}{suffix}", [])
        readable = [p for p in candidates if p.suffix.lower() in MASK_EXTENSIONS]
        if len(readable) > 1:
            names = ", ".join(p.name for p in readable)
            raise DataError(f"image {image} has several mask files in {masks}: {names}; keep one")
        if not readable:
            if candidates:
                refuse_lossy(candidates[0])
            hint = _layout_hint(stem, masks, by_base, owned)
            raise DataError(
                f"mask file not found for image {image}: expected {masks / (stem + suffix)}.png "
                f"(or .tif) for mask_type={mask_type}.\n{hint}.\nLayouts: {LAYOUTS}"
            )
        found[stem] = readable[0]
    for base, paths in by_base.items():
        if base.endswith(suffix) and base not in owned:
            raise DataError(f"mask file {paths[0]} matches no image in {image_dir}")
    return found


def _layout_hint(stem: str, masks: Path, by_base: dict[str, list[Path]], owned: set[str]) -> str:
    """What the masks folder holds for `stem` instead of the expected label map."""
    folder = masks / stem
    if folder.is_dir():
        count = sum(1 for p in folder.iterdir() if is_mask_file(p))
        return (
            f"Found {folder}/, a folder of {count} per-object masks: set "
            "data.<split>.mask_type=per_object"
        )
    related = sorted(
        base
        for base in by_base
        if base.startswith(stem) and base not in owned and not base[len(stem) :][:1].isalnum()
    )
    if len(related) == 1:
        name = by_base[related[0]][0].name
        return f"Found {name}: set data.<split>.mask_suffix={related[0][len(stem) :]!r}"
    if related:
        return (
            f"Found {len(related)} files {stem}_*: one binary mask per object? set "
            "data.<split>.mask_type=per_object"
        )
    return f"No file in {masks} is named after {stem!r}"


def per_object_files(
    images: dict[str, Path], image_dir: Path, masks: Path
) -> dict[str, list[Path]]:
    """Binary masks per image from `<stem>/` subfolders or `<stem>_*.png` names (a file goes
    to the longest image stem that prefixes it)."""
    files: dict[str, list[Path]] = {stem: [] for stem in images}
    by_length = sorted(images, key=len, reverse=True)
    for path in sorted(masks.iterdir()):
        if path.is_dir():
            if path.name not in files:
                raise DataError(f"mask folder {path} matches no image in {image_dir}")
            files[path.name].extend(p for p in sorted(path.iterdir()) if is_mask_file(p))
            continue
        if not is_mask_file(path):
            continue
        base = path.name[: -len(path.suffix)]
        owner = next((s for s in by_length if base.startswith(f"{s}_")), None)
        if owner is not None:
            files[owner].append(path)
        elif base in files:
            raise DataError(
                f"mask file {path} is named like its image, as one map of all objects; "
                f"mask_type=per_object expects one binary mask per object in {masks}/{base}/ or "
                f"{masks}/{base}_*.png. For a map of object ids set "
                "data.<split>.mask_type=instance; of class values, semantic"
            )
        else:
            raise DataError(f"mask file {path} matches no image in {image_dir}")
    return files

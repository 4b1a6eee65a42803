"""The prompts file of `samft predict`: which points and boxes to use on which image.

A JSON or YAML mapping from image file names (relative to the `input=` folder, or just
the file name) to a list of prompts; the key "*" holds prompts for every image that is
not listed by name. One prompt gives one mask:

    {
      "dog.jpg": [
        {"points": [[320, 240]], "labels": [1]},
        {"box": [100, 80, 420, 400]},
        {"name": "ear", "points": [[250, 130], [300, 300]], "labels": [1, 0],
         "box": [200, 90, 330, 210]}
      ],
      "*": [{"points": [[10, 10]]}]
    }

points: N x 2 (x, y) in pixels of the ORIGINAL image (x = column, y = row).
labels: N, 1 for "object here", 0 for "not the object"; default all 1.
box: (x0, y0, x1, y1) in pixels of the original image, x0 <= x1 and y0 <= y1.
name: optional, letters, digits, `_`, `-` and `.`; names the mask file (default
`prompt_<k>`, k counted from 0 per image).
A prompt needs points, a box or both. Coordinates may lie on the image border
(0 <= x <= W, 0 <= y <= H) but not outside it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ALL_IMAGES = "*"
PROMPT_KEYS = ("name", "points", "labels", "box")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
EXAMPLE = '{"photo.jpg": [{"points": [[120, 80]], "labels": [1]}, {"box": [10, 20, 200, 300]}]}'


class PromptsFileError(ValueError):
    """A prompts file that cannot be used; the message names the file, image and prompt."""


@dataclass(frozen=True)
class PromptSpec:
    """One prompt of one image, in the original image frame.

    points: N x 2 float32 (x, y) or None; labels: N int64 (1 / 0) or None;
    box: 4 float32 (x0, y0, x1, y1) or None.
    """

    name: str
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None

    @property
    def is_single_point(self) -> bool:
        """One click and no box: the ambiguous case where SAM's three masks help."""
        return self.box is None and self.points is not None and len(self.points) == 1


@dataclass
class PromptsFile:
    """The parsed file: prompts by image key (`ALL_IMAGES` for the rest)."""

    path: Path
    images: dict[str, list[PromptSpec]] = field(default_factory=dict)

    def for_image(self, relative: str) -> list[PromptSpec]:
        """Prompts of the image at `relative` (posix path under the input folder)."""
        name = relative.rsplit("/", 1)[-1]
        for key in (relative, name, ALL_IMAGES):
            if key in self.images:
                return self.images[key]
        return []

    def unmatched_keys(self, relatives: Iterable[str]) -> list[str]:
        """Image keys of the file that name none of the given images (typos)."""
        relatives = list(relatives)
        known = set(relatives) | {r.rsplit("/", 1)[-1] for r in relatives}
        return sorted(k for k in self.images if k != ALL_IMAGES and k not in known)


def read_prompts_file(path: str | Path) -> PromptsFile:
    """Parse and check a prompts file (JSON, or YAML for .yaml / .yml)."""
    path = Path(path)
    if not path.is_file():
        raise PromptsFileError(f"prompts file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise PromptsFileError(f"prompts file {path} is empty; expected e.g. {EXAMPLE}")
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise PromptsFileError(
            f"prompts file {path} is not valid {_language(path)}: {err}"
        ) from None
    if data is None or data == {} or data == []:
        raise PromptsFileError(f"prompts file {path} is empty; expected e.g. {EXAMPLE}")
    if not isinstance(data, dict):
        raise PromptsFileError(
            f"prompts file {path}: the top level is a {type(data).__name__}; expected a "
            f"mapping from image file names to lists of prompts, e.g. {EXAMPLE}"
        )
    parsed = PromptsFile(path)
    for image, prompts in data.items():
        where = f"prompts file {path}, image '{image}'"
        if not isinstance(prompts, list):
            raise PromptsFileError(f"{where}: expected a list of prompts, got {prompts!r}")
        specs = [_parse_prompt(p, k, where) for k, p in enumerate(prompts)]
        names = [s.name for s in specs]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise PromptsFileError(f"{where}: two prompts are named '{duplicate}'")
        if specs:
            parsed.images[str(image)] = specs
    if not parsed.images:
        raise PromptsFileError(
            f"prompts file {path} has no prompts (every image's list is empty); "
            f"expected e.g. {EXAMPLE}"
        )
    return parsed


def _language(path: Path) -> str:
    return "YAML" if path.suffix in (".yaml", ".yml") else "JSON"


def _parse_prompt(entry: Any, index: int, where: str) -> PromptSpec:
    where = f"{where}, prompt {index}"
    if not isinstance(entry, dict):
        raise PromptsFileError(f"{where}: expected a mapping with points and/or box, got {entry!r}")
    unknown = sorted(set(map(str, entry)) - set(PROMPT_KEYS))
    if unknown:
        raise PromptsFileError(f"{where}: unknown key(s) {unknown}; expected {list(PROMPT_KEYS)}")
    name = str(entry.get("name", f"prompt_{index}"))
    if not _NAME.match(name):
        raise PromptsFileError(
            f"{where}: name={name!r}; expected letters, digits, '_', '-' or '.' only"
        )
    points = labels = box = None
    if entry.get("points") is not None:
        points = _numbers(entry["points"], f"{where}, key 'points'", "[[x, y], ...]")
        if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
            raise PromptsFileError(
                f"{where}, key 'points' = {entry['points']!r}; expected a non-empty list of "
                "[x, y] pairs"
            )
        raw_labels = entry.get("labels", [1] * len(points))
        labels = _numbers(raw_labels, f"{where}, key 'labels'", "[1, 0, ...]")
        if labels.shape != (len(points),) or not np.isin(labels, (0, 1)).all():
            raise PromptsFileError(
                f"{where}, key 'labels' = {raw_labels!r}; expected {len(points)} values, each "
                "1 (object) or 0 (background)"
            )
        labels = labels.astype(np.int64)
    elif "labels" in entry:
        raise PromptsFileError(f"{where}: 'labels' given without 'points'")
    if entry.get("box") is not None:
        box = _numbers(entry["box"], f"{where}, key 'box'", "[x0, y0, x1, y1]")
        if box.shape != (4,) or box[0] > box[2] or box[1] > box[3]:
            raise PromptsFileError(
                f"{where}, key 'box' = {entry['box']!r}; expected [x0, y0, x1, y1] with "
                "x0 <= x1 and y0 <= y1"
            )
    if points is None and box is None:
        raise PromptsFileError(f"{where}: has neither 'points' nor 'box'; give at least one")
    return PromptSpec(name=name, points=points, labels=labels, box=box)


def _numbers(value: Any, where: str, expected: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise PromptsFileError(f"{where} = {value!r}; expected numbers as {expected}") from None
    if not np.isfinite(array).all():
        raise PromptsFileError(f"{where} = {value!r}; expected finite numbers as {expected}")
    return array.astype(np.float32)


def check_inside(prompt: PromptSpec, height: int, width: int, where: str) -> None:
    """Raise PromptsFileError if a point or box corner of `prompt` lies outside W x H."""
    corners = []
    if prompt.points is not None:
        corners += [("point", p) for p in prompt.points]
    if prompt.box is not None:
        corners += [("box corner", prompt.box[:2]), ("box corner", prompt.box[2:])]
    for what, (x, y) in corners:
        if not (0 <= x <= width and 0 <= y <= height):
            raise PromptsFileError(
                f"{where}, prompt '{prompt.name}': {what} (x={x:g}, y={y:g}) lies outside the "
                f"image of {width} x {height} (W x H); expected 0 <= x <= {width} and "
                f"0 <= y <= {height}, in pixels of the original image"
            )

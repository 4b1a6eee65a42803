"""Shared fixtures: the real data beside the checkout and the official package as reference."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _install_torchvision_stand_in() -> None:
    """Give `segment_anything` the two torchvision functions it imports.

    PyPI's torchvision does not import beside the CPU build of torch used here, and the
    official package imports it at import time. Its model code never calls torchvision;
    its ResizeLongestSide calls `resize(to_pil_image(image), size)`, which for PIL images
    torchvision implements as a PIL bilinear resize. The stand-in does exactly that.
    """
    try:
        import torchvision.transforms.functional  # noqa: F401

        return
    except Exception:
        pass

    def to_pil_image(image):
        return Image.fromarray(np.asarray(image))

    def resize(image, size, *args, **kwargs):
        h, w = size
        return image.resize((w, h), Image.BILINEAR)

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.resize = resize
    functional.to_pil_image = to_pil_image
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    boxes.batched_nms = None
    boxes.box_area = None
    tv.transforms, transforms.functional, tv.ops, ops.boxes = transforms, functional, ops, boxes
    sys.modules.update(
        {
            "torchvision": tv,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
            "torchvision.ops": ops,
            "torchvision.ops.boxes": boxes,
        }
    )


@pytest.fixture(scope="session")
def official():
    """The official `segment_anything` package, imported with the torchvision stand-in."""
    _install_torchvision_stand_in()
    import segment_anything

    if getattr(sys.modules.get("torchvision"), "__file__", None) is None:
        # segment_anything holds the two functions it imported; take the stand-in out of
        # sys.modules so lightning and torchmetrics never mistake it for torchvision
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    return segment_anything


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA} (expected ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def coco_mini(shared_data: Path) -> Path:
    return shared_data / "coco-mini"


@pytest.fixture(scope="session")
def ct_organs(shared_data: Path) -> Path:
    return shared_data / "ct-organs"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    np.random.seed(0)
    yield

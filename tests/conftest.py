"""Shared fixtures: the real data beside the checkout and the official package as reference."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from reference import import_segment_anything

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """`scripts/<name>.py` imported as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def scripts():
    """`scripts(name)`: a benchmark script imported as a module."""
    return load_script


@pytest.fixture(scope="session")
def official():
    """The official `segment_anything` package, imported with the torchvision stand-in."""
    return import_segment_anything()


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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (`pytestmark = pytest.mark.usefixtures(
    "one_thread")`): their matrices are small, and on a busy 2-core machine two threads
    waiting on each other cost more than they gain."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def read_only_folder(tmp_path):
    """(folder, seal): fill the folder, then `seal()` makes it read-only. A small tmpfs is
    mounted there and remounted read-only (root ignores file permissions, so only a
    read-only file system refuses root a write). Skips where this process may not mount."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("needs permission to mount a tmpfs")

    def seal() -> Path:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        return folder

    yield folder, seal
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a 256 KiB tmpfs: a real full disk for writes larger than that. Skips
    where this process may not mount."""
    folder = tmp_path / "small_disk"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("needs permission to mount a tmpfs")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)

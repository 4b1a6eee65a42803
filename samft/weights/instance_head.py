"""The instance head's weights in and out, beside the SAM they belong to.

The SAM checkpoint stays what its family's code loads: the head never enters it. Where a
head is:

- a samft Lightning checkpoint (`samft train` with `instance_head.enabled=true`): keys
  `instance_head.*` of its state dict, beside `model.*`;
- an export: `<stem>.instance_head.safetensors` beside `<stem>.pth` / `.safetensors`,
  listed in the sidecar `<stem>.json` under `files.instance_head` and described under
  `instance_head` (its arguments and the watershed's thresholds).

`load_instance_head(checkpoint)` builds it from either; `samft.weights.load_sam` builds the
SAM from the same path. The head's constructor arguments are read from its tensor shapes
(`head_arguments`; a SAM 2 head's `skip_channels` from its `skips.*` projections), so the
files need no config to be loaded, whichever SAM generation the head belongs to.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import Tensor

from samft.io.files import sha256_file
from samft.model.instance_head import InstanceHead
from samft.weights.files import CheckpointError, independent_tensors, load_tensor_file
from samft.weights.thresholds import read_sidecar, sidecar_of, unit_interval

PREFIX = "instance_head."
SIDECAR_KEY = "instance_head"
FILE_SUFFIX = ".instance_head.safetensors"
# the watershed's thresholds (`samft.infer.instance_watershed.seeded_watershed`) when
# neither the command line nor the sidecar gives them
DEFAULT_THRESHOLDS = {
    "foreground_thresh": 0.5,
    "center_thresh": 0.5,
    "boundary_thresh": 0.5,
    "min_size": 0,
}


def head_arguments(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """`InstanceHead`'s constructor arguments, from the shapes of its weights
    (`skip_channels` a list, empty for a SAM 1 family head)."""
    try:
        project = state_dict["project.0.weight"]  # width x embed_dim x 1 x 1
        last = state_dict["out.weight"].shape[1]  # the last stage's width
    except KeyError as err:
        raise CheckpointError(f"not an instance head's weights: no key {err}") from None
    stages = len({k.split(".")[1] for k in state_dict if k.startswith("stages.")})
    image = state_dict.get("image_features.0.weight")
    return {
        "embed_dim": int(project.shape[1]),
        "upsample_factor": 2**stages,
        "width": int(project.shape[0]),
        "min_width": int(last),  # reproduces every stage's width (see InstanceHead)
        "image_channels": int(image.shape[0]) if image is not None else 0,
        "skip_channels": skip_channels(state_dict),
    }


def skip_channels(state_dict: Mapping[str, Tensor]) -> list[int]:
    """The channels of each skip the head projects (`skips.<i>.0.weight`:
    width x channels x 1 x 1), in order; [] for a head without skips."""
    count = len({k.split(".")[1] for k in state_dict if k.startswith("skips.")})
    try:
        return [int(state_dict[f"skips.{i}.0.weight"].shape[1]) for i in range(count)]
    except KeyError as err:
        raise CheckpointError(f"not an instance head's weights: no key {err}") from None


def build_instance_head(state_dict: Mapping[str, Tensor], source: str) -> InstanceHead:
    """An `InstanceHead` (eval mode) holding `state_dict`, strictly."""
    head = InstanceHead(**head_arguments(state_dict))
    try:
        head.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"instance head of {source} does not load: {err}") from None
    return head.eval()


def read_instance_head(
    checkpoint: str | Path | None,
) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """(the head's state dict, its sidecar entry or {}) stored with `checkpoint`, or None
    when it holds none (Meta's weights, a known name, an export without a head)."""
    if checkpoint is None:
        return None
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        return None
    sidecar = sidecar_of(path)
    if sidecar is not None:
        entry = read_sidecar(sidecar, f"sidecar of checkpoint={checkpoint}").get(SIDECAR_KEY)
        if entry is None:
            return None
        head_file = sidecar.parent / entry["path"]
        if not head_file.is_file():
            raise CheckpointError(
                f"{sidecar} lists an instance head at {head_file}, but there is no such file"
            )
        return dict(safetensors.torch.load_file(str(head_file))), entry
    if path.suffix in (".safetensors", ".pth", ".pt") and not _is_lightning(path):
        return None
    container = load_tensor_file(path, mmap=True)
    state = container.get("state_dict", {}) if isinstance(container, Mapping) else {}
    head = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    return (head, {}) if head else None


def _is_lightning(path: Path) -> bool:
    from samft.weights.lightning import read_lightning_info

    return read_lightning_info(path) is not None


def load_instance_head(checkpoint: str | Path) -> InstanceHead | None:
    """The instance head stored with `checkpoint` (a samft Lightning checkpoint or an
    export), eval mode, or None when it holds none."""
    found = read_instance_head(checkpoint)
    if found is None:
        return None
    return build_instance_head(found[0], str(checkpoint))


def head_thresholds(checkpoint: str | Path) -> dict[str, Any]:
    """The watershed thresholds stored with `checkpoint`'s head (its sidecar's
    `instance_head.thresholds`), else `DEFAULT_THRESHOLDS`."""
    found = read_instance_head(checkpoint)
    stored = (found[1] if found else {}).get("thresholds") or {}
    return {key: stored.get(key, value) for key, value in DEFAULT_THRESHOLDS.items()}


def save_instance_head(state_dict: Mapping[str, Tensor], path: str | Path) -> Path:
    """Write the head's weights as `.safetensors` (keys without the `instance_head.`
    prefix), checked to build a head first."""
    path = Path(path)
    state = {k.removeprefix(PREFIX): v for k, v in state_dict.items()}
    build_instance_head(state, str(path))
    safetensors.torch.save_file(independent_tensors(state), str(path))
    return path


def sidecar_entry(path: Path, state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """The sidecar's `instance_head` section for the head file `path`."""
    arguments = head_arguments({k.removeprefix(PREFIX): v for k, v in state_dict.items()})
    return {
        "path": path.name,
        "sha256": sha256_file(path),
        "arguments": arguments,
        "thresholds": dict(DEFAULT_THRESHOLDS),
        "maps": ["foreground", "center_distance", "boundary_distance"],
        "load_with": "samft.weights.load_instance_head(PATH_OF_THE_SAM_FILE)",
    }


def check_head_thresholds(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The watershed thresholds as numbers: the three thresholds in [0, 1], `min_size` a
    count >= 0; a ValueError naming `where` otherwise."""
    checked = dict(values)
    for key in ("foreground_thresh", "center_thresh", "boundary_thresh"):
        checked[key] = unit_interval(values.get(key), f"{where}.{key}")
    size = values.get("min_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"{where}.min_size = {size!r}; expected a whole number >= 0")
    return checked

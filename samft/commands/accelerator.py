"""Clear errors for a GPU asked for on a machine without one, before anything is built,
and a warning for bf16 on a CPU that has no bf16 matrix units.

Lightning's own message for `accelerator=gpu` without CUDA ("No supported gpu backend
found!") names neither the config key nor the way out; torch's for `device=cuda` comes from
deep inside the first `.to()`.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Mapping
from typing import Any

import torch

log = logging.getLogger(__name__)

# Lightning accelerator names that need CUDA (or ROCm, which torch reports as cuda too).
CUDA_ACCELERATORS = ("gpu", "cuda")
MPS_ACCELERATORS = ("mps",)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def check_accelerator(trainer_cfg: Mapping[str, Any] | None) -> None:
    """Raise a ValueError when `trainer.accelerator` asks for a GPU this machine lacks.

    `auto`, `cpu`, a missing key and accelerator objects pass; `gpu` / `cuda` need
    `torch.cuda.is_available()`, `mps` Apple's backend.
    """
    if not trainer_cfg:
        return
    accelerator = trainer_cfg.get("accelerator")
    if not isinstance(accelerator, str):
        return
    name = accelerator.lower()
    if name in CUDA_ACCELERATORS and not torch.cuda.is_available():
        raise ValueError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is available on this machine "
            "(torch.cuda.is_available() is False); use trainer=cpu (or "
            "trainer.accelerator=auto), or install a CUDA build of torch"
        )
    if name in MPS_ACCELERATORS and not _mps_available():
        raise ValueError(
            f"trainer.accelerator={accelerator} but Apple's MPS backend is not available on "
            "this machine; use trainer=cpu (or trainer.accelerator=auto)"
        )


def check_device(device: str | None, key: str = "device") -> None:
    """Raise a ValueError when `<key>=cuda[:N]` / `mps` names a device this machine lacks.

    `auto`, `cpu` and None pass. `key` is the config key named in the message.
    """
    if device is None:
        return
    name = str(device).lower()
    kind, _, index = name.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{key}={device} but no CUDA GPU is available on this machine "
                f"(torch.cuda.is_available() is False); use {key}=cpu or {key}=auto"
            )
        if index.isdigit() and int(index) >= torch.cuda.device_count():
            raise ValueError(
                f"{key}={device} but this machine has {torch.cuda.device_count()} CUDA "
                f"device(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1}); use {key}=cuda "
                f"or {key}=auto"
            )
    elif kind == "mps" and not _mps_available():
        raise ValueError(
            f"{key}={device} but Apple's MPS backend is not available on this machine; "
            f"use {key}=cpu or {key}=auto"
        )


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (x86: AVX-512 BF16 or AMX).

    Without them torch's CPU kernels run bf16 products far slower than fp32 (17-88x for
    128-1024 square products on an AVX2-only x86 CPU: `scripts/bench_cpu_bf16.py`,
    docs/performance.md). Other architectures, and torch builds without the probes,
    count as having them.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    probes = [
        getattr(torch.cpu, name, None)
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    if any(probe is None for probe in probes):
        return True
    return any(probe() for probe in probes)


def warn_bf16_on_cpu(trainer_cfg: Mapping[str, Any] | None) -> bool:
    """Log a warning (and return True) when `trainer.precision` asks for bf16 on a CPU
    without bf16 matrix units: the run works, only many times slower than in fp32."""
    if not trainer_cfg:
        return False
    precision = str(trainer_cfg.get("precision", ""))
    accelerator = str(trainer_cfg.get("accelerator", "auto")).lower()
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if not (precision.startswith("bf16") and on_cpu) or cpu_has_bf16_units():
        return False
    log.warning(
        "trainer.precision=%s on a CPU without bf16 matrix units (AVX-512 BF16 or AMX): "
        "its matrix products run many times slower than in fp32 here; "
        "use trainer.precision=32-true",
        precision,
    )
    return True

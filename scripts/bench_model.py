"""Image-encoder forward+backward time and peak memory: samft against Meta's code.

Both encoders get the same seeded weights. Each configuration (implementation x
activation checkpointing) runs in its own child process, so peak-memory figures do not
leak from one into the next. "peak MiB" is the memory added on top of the built model
during the warm-up and timed steps: on CUDA the caching allocator's peak, on CPU the
peak resident set (Linux `VmHWM`, reset before the steps), which also counts allocator
slack and so is coarser, but comparable between rows.

    python scripts/bench_model.py --variant vit_b --image-size 1024 --repeats 5 --device cuda

The official package is only a development dependency; it needs torchvision at import
time, which is replaced here by a stand-in when it is not installed (its model code
never calls it).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import build_official, import_segment_anything  # noqa: E402

from samft.model.registry import build_sam

CONFIGS = [("official", False), ("official", True), ("samft", False), ("samft", True)]


class _CheckpointedBlock(nn.Module):
    """Wraps an official encoder block so it is recomputed in backward, as samft's flag does."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self.block, x, use_reentrant=False)


def _encoder(impl: str, use_ckpt: bool, args: argparse.Namespace) -> nn.Module:
    torch.manual_seed(args.seed)
    sam = build_sam(args.variant, image_size=args.image_size, activation_checkpointing=use_ckpt)
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():  # non-zero position tables so every path carries signal
        for tensor in sam.state_dict().values():
            tensor.add_(torch.randn(tensor.shape, generator=gen) * 0.02)
    encoder: nn.Module = sam.image_encoder
    if impl == "official":
        official = import_segment_anything()
        ref = build_official(official.modeling, args.variant, args.image_size).image_encoder
        ref.load_state_dict(encoder.state_dict())
        if use_ckpt:
            ref.blocks = nn.ModuleList(_CheckpointedBlock(b) for b in ref.blocks)
        encoder = ref
    return encoder.to(args.device).train()


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def _reset_peak(device: torch.device) -> int:
    """Start a new peak-memory window; returns the bytes in use now."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM to the current RSS
        f.write("5")
    return _proc_status_kib("VmRSS") * 1024


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _proc_status_kib("VmHWM") * 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run(impl: str, use_ckpt: bool, args: argparse.Namespace, queue: Any) -> None:
    """Child process: build, warm up, time `repeats` forward+backward steps."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    encoder = _encoder(impl, use_ckpt, args)
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    gen = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen).to(device)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = encoder(x)
        out.float().square().mean().backward()
        return out

    before = _reset_peak(device)
    out = step()  # warm-up (and the output we compare)
    first_grad = encoder.patch_embed.proj.weight.grad.detach().float().cpu().clone()
    encoder.zero_grad(set_to_none=True)
    times = []
    for _ in range(args.repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
        encoder.zero_grad(set_to_none=True)
    peak = _peak_bytes(device) - before
    queue.put(
        {
            "impl": impl,
            "ckpt": use_ckpt,
            "times": times,
            "peak_mib": peak / 2**20,
            "out": out.detach().float().cpu().numpy(),
            "grad": first_grad.numpy(),
        }
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="vit_b", help="tiny, vit_b, vit_l or vit_h")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after 1 warm-up")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    ctx = mp.get_context("spawn")
    results = []
    for impl, use_ckpt in CONFIGS:
        queue = ctx.Queue()
        proc = ctx.Process(target=_run, args=(impl, use_ckpt, args, queue))
        proc.start()
        results.append(queue.get())
        proc.join()

    ref = results[0]
    print(
        f"image encoder {args.variant} @ {args.image_size}px, batch {args.batch}, "
        f"{args.dtype}, device {args.device}, {args.repeats} timed forward+backward steps"
    )
    print(
        f"{'implementation':<16}{'ckpt':<6}{'median s':>10}{'min s':>9}{'peak MiB':>11}"
        f"{'max|out diff|':>15}{'max|grad diff|':>16}"
    )
    for r in results:
        out_diff = float(abs(r["out"] - ref["out"]).max())
        grad_diff = float(abs(r["grad"] - ref["grad"]).max())
        print(
            f"{r['impl']:<16}{'yes' if r['ckpt'] else 'no':<6}"
            f"{statistics.median(r['times']):>10.3f}{min(r['times']):>9.3f}"
            f"{r['peak_mib']:>11.0f}{out_diff:>15.2e}{grad_diff:>16.2e}"
        )


if __name__ == "__main__":
    main()

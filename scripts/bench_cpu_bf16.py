"""Does bf16 pay on this CPU? Square matrix products in bf16 against fp32, same process.

A CPU with bf16 matrix units (x86: AVX-512 BF16 or AMX) runs bf16 products at least as fast
as fp32, and `trainer.precision=bf16-mixed` can gain there (docs/performance.md). Without
them torch falls back to slow kernels, and bf16 training crawls; `samft train` warns
(`samft.commands.accelerator.warn_bf16_on_cpu`).

    python scripts/bench_cpu_bf16.py
    python scripts/bench_cpu_bf16.py --sizes 128 256 512 --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import torch

from samft.commands.accelerator import cpu_has_bf16_units


def seconds_per_product(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    """Mean wall time of `a @ b` over `repeats` calls, after one warm-up call."""
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, bf16 units: "
        f"{cpu_has_bf16_units()}, torch threads {torch.get_num_threads()}"
    )
    print("n | fp32 ms | bf16 ms | bf16 / fp32")
    rows = []
    for n in args.sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        fp32 = seconds_per_product(a, b, args.repeats)
        bf16 = seconds_per_product(a.bfloat16(), b.bfloat16(), args.repeats)
        rows.append({"n": n, "fp32_s": fp32, "bf16_s": bf16, "ratio": bf16 / fp32})
        print(f"{n} | {fp32 * 1e3:.2f} | {bf16 * 1e3:.1f} | {bf16 / fp32:.1f}x", flush=True)
    return rows


if __name__ == "__main__":
    main()

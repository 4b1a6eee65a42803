"""What one SAM 2.1 training step keeps in memory, counted on the CPU (no GPU needed).

For each size and mode, one `SamFineTuner.training_step` (the recipes' loss, prompts and
correction rounds) runs on a real 1024 px batch from `coco-mini`, forward only, while a
`torch.autograd.graph.saved_tensors_hooks` pair counts every tensor autograd keeps for the
backward pass (kept, as the graph keeps them, so no address is reused while counting);
storages are counted once, and parameters (counted as weights) are left out. Printed per
row:

    weights+grads+adam  4 bytes per parameter, plus 12 per trained one (gradient, two
                        AdamW moments), fp32
    saved               activations autograd keeps for backward, fp32
    block max           the largest single encoder block's saved activations (with
                        activation checkpointing only block inputs are kept, and one block
                        is recomputed at a time in backward)

    python scripts/memory_sam2.py --variants sam2.1_hiera_t --modes frozen lora full
    python scripts/memory_sam2.py --objects 4 8 --checkpointing

These are lower bounds of a GPU's peak: the backward pass's transient buffers, the
allocator's slack and the CUDA context (~0.5-1 GB) come on top; docs/performance.md turns
them into the table of what fits.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from samft.data.datamodule import SamDataModule
from samft.data.prompts import PromptSampler
from samft.model.registry import get_hyper_params
from samft.train.module import SamFineTuner

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"
SAM2_LOSS = {
    "focal_weight": 20.0,
    "dice_weight": 1.0,
    "iou_weight": 1.0,
    "iou_loss": "l1",
    "object_score_weight": 1.0,
}
GIB = 2**30


class SavedCounter:
    """Bytes of the distinct storages autograd saves while active, parameters excluded;
    `marks` lets a caller read the running total around a block."""

    def __init__(self, parameters: set[int]) -> None:
        self.parameters = parameters
        self.seen: set[int] = set()
        self.total = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        address = storage.data_ptr()
        if address not in self.seen and address not in self.parameters:
            self.seen.add(address)
            self.total += storage.nbytes()
        return tensor

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def _batch(variant: str, objects: int, data: Path):
    dm = SamDataModule(
        train={
            "format": "coco",
            "annotations": str(data / "annotations_train.json"),
            "images": str(data / "images"),
        },
        image_size=1024,
        batch_size=1,
        num_workers=0,
        max_objects_per_image=objects,
        prompts=PromptSampler(point_prob=0.5, box_prob=0.5),
        resize_interpolation=get_hyper_params(variant).resize_interpolation,
        seed=0,
    )
    torch.manual_seed(0)
    return next(iter(dm.train_dataloader()))


def measure(variant: str, mode: str, objects: int, checkpointing: bool, data: Path) -> dict:
    """One row: the step's weights/optimiser bytes and its saved activations."""
    module = SamFineTuner(
        model={"variant": variant, "image_size": 1024, "activation_checkpointing": checkpointing},
        finetune={"image_encoder": mode, "lora_rank": 8, "lora_alpha": 8.0},
        loss=SAM2_LOSS,
        interactive={"correction_rounds": 2},
    ).train()
    batch = _batch(variant, objects, data)
    if mode == "frozen":  # the sam2_decoder recipe reads the encoder's output from the cache
        with torch.no_grad():
            batch.embeddings = [
                t.half() for t in module.model.to_cached(module.encode_images(batch.images))
            ]
    params = list(module.parameters())
    total = sum(p.numel() for p in params)
    trained = sum(p.numel() for p in params if p.requires_grad)
    counter = SavedCounter({p.untyped_storage().data_ptr() for p in params})
    blocks: list[int] = []
    marks: dict[int, int] = {}
    hooks = []
    if mode != "frozen":
        for i, block in enumerate(module.model.image_encoder.trunk.blocks):
            hooks.append(
                block.register_forward_pre_hook(
                    lambda m, a, i=i: marks.__setitem__(i, counter.total)
                )
            )
            hooks.append(
                block.register_forward_hook(
                    lambda m, a, o, i=i: blocks.append(counter.total - marks[i])
                )
            )
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        loss = module.training_step(batch, 0)
    del loss  # frees the graph and what it saved
    for hook in hooks:
        hook.remove()
    return {
        "variant": variant,
        "mode": mode,
        "objects": objects,
        "checkpointing": checkpointing,
        "parameters_m": total / 1e6,
        "trained_m": trained / 1e6,
        "weights_optim_gib": (4 * total + 12 * trained) / GIB,
        "saved_gib": counter.total / GIB,
        "block_max_gib": max(blocks, default=0) / GIB,
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l"],
    )
    parser.add_argument("--modes", nargs="+", default=["frozen", "lora", "full"])
    parser.add_argument("--objects", type=int, nargs="+", default=[4], help="prompts per image")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="coco-mini style folder")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    rows = []
    print(
        "variant          mode    K  ckpt  params M  trained M  weights+grads+adam GiB"
        "  saved GiB  block max GiB"
    )
    for variant in args.variants:
        for mode in args.modes:
            for objects in args.objects:
                r = measure(variant, mode, objects, args.checkpointing, Path(args.data))
                rows.append(r)
                ckpt = "T" if r["checkpointing"] else "F"
                print(
                    f"{variant:16s} {mode:6s} {objects:2d}  {ckpt:4s}  {r['parameters_m']:8.1f}"
                    f"  {r['trained_m']:9.2f}  {r['weights_optim_gib']:22.2f}"
                    f"  {r['saved_gib']:9.2f}  {r['block_max_gib']:13.2f}   ({r['seconds']:.0f} s)",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""Training throughput and peak memory: a naive loop on Meta's modules against samft.

Three ways to train the mask decoder (and prompt encoder) with the image encoder frozen,
on the same batches of real images, objects and prompts:

    naive   Meta's modules in a plain PyTorch loop (`segment_anything` for SAM, MobileSAM
            and LiteMedSAM, `sam2` for the hiera variants and `sam2_tiny`): the encoder
            runs on every step, the decoder is called once per prompt, the loss is taken on
            masks upscaled to the input size (1024 px for the official models)
    samft   `SamFineTuner.training_step`: encoder every step, all prompts of the batch in
            batched decoder calls (shared first block per image)
    cached  the same step, the features read from the cache as `samft cache` stores them
            (the model's `to_cached`: SAM's embedding, SAM 2's three levels), fp16

Batches are in the variant's input frame (its `resize_interpolation`: SAM's long side,
SAM 2's square). For SAM 2 the naive loop sends prompts as Meta's predictor does (a box
as two corner points labelled 2 and 3, then the clicks) and answers a single positive point
with the three multimask outputs, any other prompt with the single one (samft's
`interactive.multimask_output=auto`), so its step-0 loss equals samft's ("loss@0").

With `--decoder`, only the prompt encoder + mask decoder forward+backward per prompt, on
random embeddings of the variant's size: Meta's decoder called once per prompt, Meta's
decoder called once on all prompts of an image (it repeats the embedding per prompt), and
samft's batched decoder over all prompts of all images in one call.

It also times the data loader alone (samples/s, `num_workers=0`) to compare with what the
model consumes. With `--memory`, two more rows: a naive full fine-tune (official modules,
encoder trained) and samft's LoRA with activation checkpointing.

With `--precision fp32 bf16`, each row runs once per precision (bf16: the step under
`torch.autocast`, as `trainer.precision=bf16-mixed` runs it, fp32 weights), and the column
"x fp32" gives its speed against the same row in fp32.

Each row runs in its own child process. "peak MiB" is the memory added during the steps on
top of the built model: on CUDA the allocator's peak, on CPU the peak resident set (Linux
VmHWM, reset before the steps; coarser, but comparable between rows).

    python scripts/bench_train.py --variant tiny --objects 1 8 --steps 5
    python scripts/bench_train.py --variant vit_b --objects 1 8 --steps 2 --device cuda
    python scripts/bench_train.py --variant vit_b --image-size 512 --objects 1 --memory
    python scripts/bench_train.py --variant vit_b --decoder --objects 1 8 16
    python scripts/bench_train.py --variant lite_medsam --rows samft cached --objects 4 \
        --precision fp32 bf16
    python scripts/bench_train.py --variant sam2.1_hiera_t --image-size 512 --objects 4
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from lightning.fabric.utilities.apply_func import apply_to_collection  # noqa: E402
from reference import build_official, import_segment_anything  # noqa: E402
from reference_sam2 import import_sam2, sam2_hydra, tiny_config  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from samft.data.batch import SamBatch
from samft.data.datamodule import SamDataModule
from samft.data.prompts import PromptSampler
from samft.model.prompts import LABEL_BOX_TOP_LEFT, LABEL_PAD, LABEL_POSITIVE
from samft.model.registry import get_hyper_params
from samft.model.sam2 import Sam2
from samft.model.sam2.carried import is_video_part
from samft.model.sam2.model import IMAGENET_MEAN, IMAGENET_STD
from samft.train.losses import SamLoss
from samft.train.module import SamFineTuner

ROWS = ("naive", "samft", "cached")
MEMORY_ROWS = ("naive_full", "samft_lora_ckpt")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"


def _batches(
    args: argparse.Namespace, objects: int, resize_interpolation: str
) -> tuple[list[SamBatch], float]:
    """`steps + 1` batches (the first is the warm-up) in the model's input frame
    (`resize_interpolation`, the model's), and the loader's samples/s."""
    data = Path(args.data)
    spec = {
        "format": "coco",
        "annotations": str(data / "annotations_train.json"),
        "images": str(data / "images"),
    }
    dm = SamDataModule(
        train=spec,
        image_size=args.image_size,
        resize_interpolation=resize_interpolation,
        batch_size=args.images,
        num_workers=0,
        max_objects_per_image=objects,
        prompts=PromptSampler(point_prob=0.5, box_prob=0.5),
        seed=args.seed,
    )
    torch.manual_seed(args.seed)
    loader = iter(dm.train_dataloader())
    start = time.perf_counter()
    batches = [next(loader) for _ in range(args.steps + 1)]
    seconds = time.perf_counter() - start
    return batches, sum(len(b.images) for b in batches) / seconds


def _module(args: argparse.Namespace, encoder: str, ckpt: bool = False) -> SamFineTuner:
    torch.manual_seed(args.seed)
    return SamFineTuner(
        model={
            "variant": args.variant,
            "image_size": args.image_size,
            "activation_checkpointing": ckpt,
        },
        finetune={"image_encoder": encoder},
        optim={"lr": 1e-5, "warmup_steps": 0, "schedule": "constant"},
    )


def _to(batch: SamBatch, device: torch.device) -> SamBatch:
    return apply_to_collection(batch, torch.Tensor, lambda t: t.to(device))


def _naive_step(
    ref: nn.Module, batch: SamBatch, loss_fn: SamLoss, size: int, train_encoder: bool
) -> Tensor:
    """One step the plain way on Meta's SAM: encoder, then one decoder call and backward per
    prompt (all three multimask outputs). Returns the step's loss (detached)."""
    x = torch.cat([ref.preprocess(img[None].float()) for img in batch.images])
    with torch.set_grad_enabled(train_encoder):
        embeddings = ref.image_encoder(x)
    coords, labels = batch.prompts.coords, batch.prompts.labels
    rows = range(labels.shape[0])
    total = torch.zeros((), device=batch.gt_masks.device)
    for row in rows:
        keep = labels[row] != -1
        sparse, dense = ref.prompt_encoder(
            points=(coords[row][keep][None], labels[row][keep][None]), boxes=None, masks=None
        )
        image = int(batch.object_image_index[row])
        low, iou = ref.mask_decoder(
            embeddings[image : image + 1], ref.prompt_encoder.get_dense_pe(), sparse, dense, True
        )
        logits = F.interpolate(low, (size, size), mode="bilinear", align_corners=False)
        gt = batch.gt_masks[row : row + 1]
        out = loss_fn(logits, iou, gt, torch.ones_like(gt), float(len(rows)))
        out.total.backward(retain_graph=train_encoder and row < len(rows) - 1)
        total = total + out.total.detach().float()
    return total


def _naive_step_sam2(
    ref: nn.Module, batch: SamBatch, loss_fn: SamLoss, size: int, train_encoder: bool
) -> Tensor:
    """One step the plain way on Meta's SAM 2 (`SAM2Base`), as its image predictor runs:
    images (already the S x S square) to [0, 1] and ImageNet-normalised, `forward_image`
    (FPN levels, the two high-resolution ones through `conv_s0` / `conv_s1`),
    `no_mem_embed` added to the lowest level; then per prompt the prompt encoder (box
    corners, labels 2 and 3, before the clicks; a padding point added) and the mask decoder
    with the high-resolution features, and a backward. A single positive point is answered
    by the three multimask outputs, any other prompt by the single one. Returns the step's
    loss (detached)."""
    device = batch.gt_masks.device
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(-1, 1, 1)
    x = torch.stack([(img.float() / 255 - mean) / std for img in batch.images])
    with torch.set_grad_enabled(train_encoder):
        level0, level1, embed = ref.forward_image(x)["backbone_fpn"]  # S/4, S/8, S/16
        if ref.directly_add_no_mem_embed:
            embed = embed + ref.no_mem_embed.reshape(1, -1, 1, 1)
    pe = ref.sam_prompt_encoder.get_dense_pe()
    coords, labels = batch.prompts.coords, batch.prompts.labels  # P x K x 2, input frame
    rows = range(labels.shape[0])
    total = torch.zeros((), device=batch.gt_masks.device)
    for row in rows:
        keep, corner = labels[row] != LABEL_PAD, labels[row] >= LABEL_BOX_TOP_LEFT
        order = torch.cat([torch.nonzero(keep & corner), torch.nonzero(keep & ~corner)])[:, 0]
        points = (coords[row, order][None], labels[row, order][None])
        sparse, dense = ref.sam_prompt_encoder(points=points, boxes=None, masks=None)
        multimask = len(order) == 1 and int(labels[row, order[0]]) == LABEL_POSITIVE
        i = int(batch.object_image_index[row])
        low, iou, _, object_score = ref.sam_mask_decoder(
            embed[i : i + 1],
            pe,
            sparse,
            dense,
            multimask_output=multimask,
            repeat_image=False,
            high_res_features=[level0[i : i + 1], level1[i : i + 1]],
        )
        logits = F.interpolate(low, (size, size), mode="bilinear", align_corners=False)
        gt = batch.gt_masks[row : row + 1]
        out = loss_fn(
            logits, iou, gt, torch.ones_like(gt), float(len(rows)), object_scores=object_score
        )
        out.total.backward(retain_graph=train_encoder and row < len(rows) - 1)
        total = total + out.total.detach().float()
    return total


def _meta_sam2(variant: str, image_size: int) -> nn.Module:
    """Meta's `SAM2Base` of `variant` for `image_size` px (random weights): its released
    config read from the `sam2` package (`sam2.1_hiera_t` -> configs/sam2.1/...), or
    `reference_sam2.tiny_config()` for `sam2_tiny`."""
    meta = import_sam2()
    if variant == "sam2_tiny":
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        config = {**tiny_config(), "image_size": image_size}
        return instantiate(OmegaConf.create(config), _recursive_=True)
    version = variant.split("_hiera")[0]
    with sam2_hydra():
        return meta.build_sam.build_sam2(
            f"configs/{version}/{variant}.yaml",
            device="cpu",
            mode="train",
            hydra_overrides_extra=[f"++model.image_size={image_size}"],
        )


def _reference(module: SamFineTuner, args: argparse.Namespace) -> nn.Module:
    """Meta's model of the variant with the weights of `module.model`, in train mode."""
    weights = module.model.state_dict()
    if isinstance(module.model, Sam2):
        ref = _meta_sam2(args.variant, args.image_size)
        missing, unexpected = ref.load_state_dict(weights, strict=False)
        if unexpected or not all(is_video_part(key) for key in missing):
            raise RuntimeError(
                f"Meta's {args.variant} does not take samft's state dict: unexpected "
                f"{unexpected[:5]}, missing image-model keys "
                f"{[k for k in missing if not is_video_part(k)][:5]}"
            )
    else:
        ref = build_official(import_segment_anything().modeling, args.variant, args.image_size)
        ref.load_state_dict(weights)
    return ref.train()


def _reset_peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    return _status_kib("VmRSS") * 1024


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _status_kib("VmHWM") * 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_row(row: str, objects: int, precision: str, args: argparse.Namespace, queue: Any) -> None:
    """Child process: build the row's model, warm up on batch 0, time the other batches.
    Puts the row's figures (a dict) on `queue`, the loss of batch 0 among them."""
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    encoder = {"naive_full": "full", "samft_lora_ckpt": "lora"}.get(row, "frozen")
    module = _module(args, encoder, ckpt=row == "samft_lora_ckpt").to(device)
    model = module.model
    batches, loader_rate = _batches(args, objects, model.resize_interpolation)
    batches = [_to(b, device) for b in batches]
    if row == "cached":
        with torch.no_grad():
            for b in batches:
                cached = model.to_cached(module.encode_images(b.images))
                b.embeddings = apply_to_collection(cached, torch.Tensor, lambda t: t.half())
    params = [p for p in module.parameters() if p.requires_grad]
    if row.startswith("naive"):
        ref = _reference(module, args).to(device)
        ref.image_encoder.requires_grad_(row == "naive_full")
        naive_step = _naive_step_sam2 if isinstance(model, Sam2) else _naive_step
        params = [p for p in ref.parameters() if p.requires_grad]
        loss_fn = SamLoss()
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    autocast = torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")

    def step(batch: SamBatch) -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            if row.startswith("naive"):
                loss = naive_step(ref, batch, loss_fn, args.image_size, row == "naive_full")
            else:
                loss = module.training_step(batch, 0)
        if not row.startswith("naive"):
            loss.backward()
        optimizer.step()
        return float(loss)

    before = _reset_peak(device)
    first_loss = step(batches[0])
    times = []
    for batch in batches[1:]:
        _sync(device)
        start = time.perf_counter()
        step(batch)
        _sync(device)
        times.append(time.perf_counter() - start)
    queue.put(
        {
            "row": row,
            "precision": precision,
            "objects_per_image": objects,
            "seconds": sum(times),
            "prompts": sum(int(b.prompts.labels.shape[0]) for b in batches[1:]),
            "images": sum(len(b.images) for b in batches[1:]),
            "peak_mib": (_peak(device) - before) / 2**20,
            "loader_images_per_s": loader_rate,
            "first_loss": first_loss,
        }
    )


def _decoder_bench(args: argparse.Namespace) -> None:
    """Per-prompt decoder forward+backward: official loop, official batched, samft batched."""
    if args.threads:
        torch.set_num_threads(args.threads)
    module = _module(args, "frozen")
    ours = module.model
    if isinstance(ours, Sam2):
        raise SystemExit(
            f"--decoder compares Meta's SAM decoder; {args.variant} is a SAM 2 variant: "
            "run the training table (without --decoder) for its rows"
        )
    ref = build_official(import_segment_anything().modeling, args.variant, args.image_size)
    ref.load_state_dict(ours.state_dict())
    ref.train(), ours.train()
    pe = ours.prompt_encoder
    h, w = pe.image_embedding_size
    gen = torch.Generator().manual_seed(args.seed)
    embeddings = torch.randn(args.images, pe.embed_dim, h, w, generator=gen)

    def run(sam, prompts: int, mode: str) -> float:
        coords = torch.rand(prompts * args.images, 2, 2, generator=gen) * args.image_size
        labels = torch.tensor([[1, -1]]).expand(len(coords), 2)
        index = torch.arange(args.images).repeat_interleave(prompts)
        start = time.perf_counter()
        if mode == "loop":
            for i in range(len(coords)):
                sparse, dense = sam.prompt_encoder(
                    (coords[i : i + 1], labels[i : i + 1]), None, None
                )
                m, s = sam.mask_decoder(
                    embeddings[index[i]][None], pe.get_dense_pe(), sparse, dense, True
                )
                (m.square().mean() + s.sum()).backward()
        elif mode == "per_image":
            for image in range(args.images):
                rows = index == image
                sparse, dense = sam.prompt_encoder((coords[rows], labels[rows]), None, None)
                m, s = sam.mask_decoder(
                    embeddings[image : image + 1], pe.get_dense_pe(), sparse, dense, True
                )
                (m.square().mean() + s.sum()).backward()
        else:
            sparse, dense = sam.prompt_encoder((coords, labels), None, None)
            m, s = sam.mask_decoder(
                embeddings, pe.get_dense_pe(), sparse, dense, True, image_index=index
            )
            (m.square().mean() + s.sum()).backward()
        return (time.perf_counter() - start) / len(coords)

    rows = [("official", ref, "loop"), ("official", ref, "per_image"), ("samft", ours, "batched")]
    print(
        f"decoder fwd+bwd per prompt, {args.variant} @ {args.image_size}px ({h}x{w} tokens), "
        f"{args.images} images, torch threads {torch.get_num_threads()}; best of {args.steps}"
    )
    print(
        f"{'K/image':>8}{'official loop':>15}{'official 1 call/img':>21}{'samft batched':>15}"
        f"{'samft/official loop':>21}"
    )
    for prompts in args.objects:
        times = {}
        for _, sam, mode in rows:
            run(sam, prompts, mode)  # warm-up
            times[mode] = min(run(sam, prompts, mode) for _ in range(args.steps))
        print(
            f"{prompts:>8}{times['loop']:>15.4f}{times['per_image']:>21.4f}"
            f"{times['batched']:>15.4f}{times['batched'] / times['loop']:>21.2f}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, `image_size` filled in with the variant's default."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variant", default="tiny", help="tiny, vit_b, ..., lite_medsam, sam2_tiny, sam2.1_hiera_t"
    )
    parser.add_argument("--image-size", type=int, default=None, help="default: the variant's")
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 8], help="K per image")
    parser.add_argument("--images", type=int, default=2, help="images per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after 1 warm-up")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS + MEMORY_ROWS)
    parser.add_argument("--memory", action="store_true", help="add the memory rows")
    parser.add_argument("--decoder", action="store_true", help="decoder-only table instead")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="coco-mini style folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: default)")
    parser.add_argument(
        "--precision", nargs="+", default=["fp32"], choices=("fp32", "bf16"), help="per row"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.image_size is None:
        args.image_size = get_hyper_params(args.variant).image_size
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.decoder:
        _decoder_bench(args)
        return
    rows = list(args.rows) + (list(MEMORY_ROWS) if args.memory else [])

    ctx = mp.get_context("spawn")
    results = []
    for objects in args.objects:
        for row in rows:
            for precision in args.precision:
                queue = ctx.Queue()
                proc = ctx.Process(target=_run_row, args=(row, objects, precision, args, queue))
                proc.start()
                results.append(queue.get())
                proc.join()
                r = results[-1]
                print(
                    f"  done: {row} {precision} K={objects} in {r['seconds']:.1f} s",
                    file=sys.stderr,
                )

    print(
        f"{args.variant} @ {args.image_size}px, {args.images} images/step, device {args.device}, "
        f"{args.steps} timed steps, torch threads {args.threads or torch.get_num_threads()}"
    )
    print(
        f"{'row':<17}{'precision':>10}{'K':>3}{'prompts/s':>11}{'images/s':>10}{'x naive':>9}"
        f"{'x fp32':>8}{'peak MiB':>10}{'loader img/s':>14}{'loss@0':>9}"
    )
    for r in results:
        r["prompts_per_s"] = r["prompts"] / r["seconds"]
        r["images_per_s"] = r["images"] / r["seconds"]

    def speed_against(row: str, r: dict, precision: str) -> float:
        base = next(
            (
                x
                for x in results
                if x["row"] == row
                and x["precision"] == precision
                and x["objects_per_image"] == r["objects_per_image"]
            ),
            None,
        )
        return r["prompts_per_s"] / base["prompts_per_s"] if base else float("nan")

    for r in results:
        print(
            f"{r['row']:<17}{r['precision']:>10}{r['objects_per_image']:>3}"
            f"{r['prompts_per_s']:>11.3f}{r['images_per_s']:>10.3f}"
            f"{speed_against('naive', r, r['precision']):>9.1f}"
            f"{speed_against(r['row'], r, 'fp32'):>8.2f}{r['peak_mib']:>10.0f}"
            f"{r['loader_images_per_s']:>14.2f}{r['first_loss']:>9.4f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()

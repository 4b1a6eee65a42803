"""Prompt-free instance segmentation with a trained instance head: one encoder pass, one
head pass and a seeded watershed per image, instead of a grid of prompts.

`HeadInstanceSegmenter.generate(image)` answers like `AutomaticMaskGenerator.generate`, one
record per instance, so `samft segment` writes the same files for both modes:

- `segmentation` (per `output_mode`: `H x W` bool, or COCO RLE), `area`, `bbox` [x, y, w, h]
  (w = x1 - x0 on the inclusive box, as the grid's records), `crop_box` (the whole image);
- `score`: the mean foreground probability over the instance (the head has no IoU head;
  COCO AP ranks by it), and `point_coords` [[x, y]]: the instance's pixel nearest to its
  predicted centre (lowest centre distance).

Frames: the image is resized to the input frame with the model family's filter, as the
encoder was trained on (SAM: long side S, then padded to the S x S square; SAM 2: the
S x S square itself); the head's maps are cropped to the input frame (off SAM's padding;
all of SAM 2's square) and resized (bilinear) to the original image before the watershed,
so the borders are drawn at the image's own resolution.

Both SAM generations go through the same steps: the model's `encode` (SAM 2:
`no_mem_embed` added, the finer levels through `conv_s0` / `conv_s1`, as in training), then
its `instance_features` give the head its embedding and skips.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from samft.data.instance_targets import CENTER_DISTANCE, FOREGROUND
from samft.data.resize import resize_image
from samft.infer.instance_watershed import seeded_watershed
from samft.infer.rle import masks_to_coco
from samft.model.instance_head import InstanceHead
from samft.model.promptable import TrainableSam

OUTPUT_MODES = ("binary_mask", "coco_rle")


class HeadInstanceSegmenter:
    """A `Sam`'s or `Sam2`'s encoder and an `InstanceHead` with the watershed's thresholds.

    Args:
        sam: the model whose encoder the head was trained on (its device is used).
        head: the trained head.
        foreground_thresh, center_thresh, boundary_thresh, min_size: `seeded_watershed`'s.
        output_mode: `binary_mask` or `coco_rle` records.
    """

    def __init__(
        self,
        sam: TrainableSam,
        head: InstanceHead,
        foreground_thresh: float = 0.5,
        center_thresh: float = 0.5,
        boundary_thresh: float = 0.5,
        min_size: int = 0,
        output_mode: str = "binary_mask",
    ) -> None:
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        self.sam = sam.eval()
        self.head = head.to(sam.device).eval()
        self.thresholds = {
            "foreground_thresh": float(foreground_thresh),
            "center_thresh": float(center_thresh),
            "boundary_thresh": float(boundary_thresh),
            "min_size": int(min_size),
        }
        self.output_mode = output_mode

    @torch.no_grad()
    def maps(self, image: np.ndarray) -> np.ndarray:
        """`H x W x 3` uint8 RGB -> `3 x H x W` float32 maps in [0, 1] (foreground, centre
        distance, boundary distance), in the original frame."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 image, got shape {image.shape}")
        sam = self.sam
        resized = resize_image(image, sam.image_size, sam.resize_interpolation)
        pixels = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        x = sam.preprocess(pixels[None].to(sam.device).float())  # 1 x 3 x S x S
        embedding, skips = sam.instance_features(sam.encode(x))
        logits = self.head(embedding, x, skips)  # 1 x 3 x S x S
        h, w = resized.shape[:2]  # the input frame: SAM's unpadded part, SAM 2's S x S
        probs = logits[:, :, :h, :w].float().sigmoid()
        if (h, w) != image.shape[:2]:
            probs = F.interpolate(probs, size=image.shape[:2], mode="bilinear", align_corners=False)
        return probs[0].cpu().numpy()

    def labels(self, image: np.ndarray, maps: np.ndarray | None = None) -> np.ndarray:
        """`H x W` int32 instance ids (0 background) of `image` (or of its `maps`)."""
        maps = self.maps(image) if maps is None else maps
        return seeded_watershed(*maps, **self.thresholds)

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """One record per instance of `image` (see the module docstring)."""
        maps = self.maps(image)
        return instance_records(self.labels(image, maps), maps, self.output_mode)


def instance_records(
    labels: np.ndarray, maps: np.ndarray, output_mode: str = "binary_mask"
) -> list[dict[str, Any]]:
    """Records of the instances of `labels` (`H x W`, ids 1..N), in id order, with scores
    and points from `maps` (`3 x H x W`)."""
    height, width = labels.shape
    records = []
    for label, box in enumerate(ndi.find_objects(labels), 1):
        if box is None:
            continue
        crop = labels[box] == label
        rows, cols = np.nonzero(crop)
        center = maps[CENTER_DISTANCE][box][crop]
        nearest = int(np.argmin(center))
        mask = np.zeros((height, width), dtype=bool)
        mask[box] = crop
        segmentation = masks_to_coco(mask[None])[0] if output_mode == "coco_rle" else mask
        y0, x0 = box[0].start, box[1].start
        records.append(
            {
                "segmentation": segmentation,
                "area": int(crop.sum()),
                "bbox": [x0, y0, box[1].stop - 1 - x0, box[0].stop - 1 - y0],
                "score": float(maps[FOREGROUND][box][crop].mean()),
                "point_coords": [[float(x0 + cols[nearest]), float(y0 + rows[nearest])]],
                "crop_box": [0, 0, width, height],
            }
        )
    return records

"""Resize images so their long side is the model's input size, and move prompts with them.

`input_shape` is the one resize rule of SAM's families (data pipeline, predictor, export):
the original image frame (H x W) maps to the input frame (h x w, long side S) by a
per-axis scale, and coordinates scale the same way. The uint8 path resizes through
PIL's bilinear filter exactly as the official `ResizeLongestSide` does, so embeddings
match the official predictor's bit for bit at the input.

SAM 2 has another rule (`SQUARE_RESIZE`): every image goes to the S x S square, its aspect
ratio not kept. `frame_shape` gives either frame from the family's resize name, so the data
pipeline serves each generation in its own input frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor


def input_shape(height: int, width: int, image_size: int) -> tuple[int, int]:
    """(h, w) after scaling the long side of H x W to `image_size`; each side is rounded
    half up, as the official transform does."""
    scale = image_size * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


# How each family resizes a uint8 image to the input frame: SAM and MobileSAM through PIL's
# bilinear filter (the official `ResizeLongestSide`), LiteMedSAM through OpenCV's area filter
# (both to long side S); SAM 2 to the S x S square, bilinear with antialiasing on floats
# (torchvision's `Resize` on a tensor, as Meta's `SAM2Transforms`).
SQUARE_RESIZE = "bilinear_antialias"
LONG_SIDE_FILTERS = ("bilinear", "area")
RESIZE_FILTERS = (*LONG_SIDE_FILTERS, SQUARE_RESIZE)


def frame_shape(height: int, width: int, image_size: int, interpolation: str) -> tuple[int, int]:
    """(h, w) of the input frame of an H x W image for a family resizing with
    `interpolation`: (S, S) for SAM 2's square, else `input_shape` (long side S)."""
    if interpolation == SQUARE_RESIZE:
        return image_size, image_size
    return input_shape(height, width, image_size)


def resize_uint8(image: np.ndarray, height: int, width: int, interpolation: str) -> np.ndarray:
    """`H x W x C` (or `H x W`) uint8 -> `height x width (x C)` uint8 with the family's
    filter (`RESIZE_FILTERS`)."""
    if interpolation == "area":
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        return resized[..., None] if image.ndim == 3 and resized.ndim == 2 else resized
    if interpolation == SQUARE_RESIZE:
        return resize_antialiased(image, height, width)
    if interpolation != "bilinear":
        raise ValueError(
            f"unknown resize interpolation {interpolation!r}; expected {RESIZE_FILTERS}"
        )
    single_channel = image.ndim == 3 and image.shape[2] == 1
    pil = Image.fromarray(np.ascontiguousarray(image[..., 0] if single_channel else image))
    resized = np.array(pil.resize((width, height), Image.BILINEAR))
    return resized[..., None] if single_channel else resized


def resize_antialiased(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`H x W x C` (or `H x W`) uint8 -> `height x width (x C)` uint8: torch's bilinear
    interpolation with antialiasing, rounded. Meta's SAM 2 resizes [0, 1] floats the same
    way and feeds them on unrounded; the interpolation is linear, so the two differ by the
    rounding alone (at most half a grey level)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).float()
    x = x[None, None] if image.ndim == 2 else x.permute(2, 0, 1)[None]
    x = F.interpolate(x, (height, width), mode="bilinear", align_corners=False, antialias=True)
    out = x.round().clamp(0, 255).to(torch.uint8)[0]
    return (out[0] if image.ndim == 2 else out.permute(1, 2, 0)).numpy()


class ResizeLongestSide:
    """Resize to long side `target_length`; coordinates are (x, y) pixels.

    `interpolation` is the model family's image filter (`Sam.resize_interpolation`).
    """

    def __init__(self, target_length: int, interpolation: str = "bilinear") -> None:
        self.target_length = int(target_length)
        self.interpolation = interpolation

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """`(h, w)` after scaling `(oldh, oldw)` so the long side is `long_side_length`."""
        return input_shape(oldh, oldw, long_side_length)

    def _scale(self, original_size: Sequence[int]) -> tuple[float, float]:
        """(x scale, y scale) from the original frame to the input frame."""
        old_h, old_w = int(original_size[0]), int(original_size[1])
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        return new_w / old_w, new_h / old_h

    # ------------------------------------------------------------------ numpy
    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """`H x W x C` (or `H x W`) uint8 -> `h x w x C` uint8 (PIL bilinear by default)."""
        if image.dtype != np.uint8:
            raise ValueError(
                f"apply_image expects a uint8 H x W x C image, got dtype {image.dtype}; "
                "use apply_image_torch for float images"
            )
        h, w = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return resize_uint8(image, h, w, self.interpolation)

    def apply_coords(self, coords: np.ndarray, original_size: Sequence[int]) -> np.ndarray:
        """`... x 2` (x, y) in the original frame -> float64, input frame."""
        sx, sy = self._scale(original_size)
        out = np.array(coords, dtype=float, copy=True)
        out[..., 0] *= sx
        out[..., 1] *= sy
        return out

    def apply_boxes(self, boxes: np.ndarray, original_size: Sequence[int]) -> np.ndarray:
        """`B x 4` (x0, y0, x1, y1) in the original frame -> `B x 4` float64, input frame."""
        boxes = np.asarray(boxes)
        return self.apply_coords(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    # ------------------------------------------------------------------ torch
    def apply_image_torch(self, image: Tensor) -> Tensor:
        """`B x C x H x W` float -> `B x C x h x w`, bilinear with antialiasing.

        Close to, but not bit-identical with, `apply_image` (PIL); the official version
        of this method takes the target size from the batch and channel axes by mistake,
        this one uses the image's own height and width.
        """
        h, w = self.get_preprocess_shape(image.shape[-2], image.shape[-1], self.target_length)
        return F.interpolate(image, (h, w), mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(self, coords: Tensor, original_size: Sequence[int]) -> Tensor:
        """`... x 2` (x, y) in the original frame -> float32, input frame."""
        sx, sy = self._scale(original_size)
        scale = torch.tensor([sx, sy], dtype=torch.float32, device=coords.device)
        return coords.to(torch.float32) * scale

    def apply_boxes_torch(self, boxes: Tensor, original_size: Sequence[int]) -> Tensor:
        """`B x 4` (x0, y0, x1, y1) in the original frame -> `B x 4` float32, input frame."""
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

"""Prompted inference with the official predictors' API, for both SAM generations.

One predictor for `Sam` (Meta's `SamPredictor`) and `Sam2` (Meta's `SAM2ImagePredictor`):
encode an image once with `set_image`, then call `predict` as often as needed with points,
a box and/or a previous low-res mask. Each generation's own steps (resizing, features,
how a box is prompted, how masks return to the image, the clamp SAM 2 puts on the
low-res logits it returns) sit behind the model's side of `samft.model.promptable`.

Prompts to `predict` are in the original image frame (pixels, x/y); `predict_torch`
takes them already in the input frame. Masks come back as booleans (logits with
`return_logits`); Meta's SAM 2 predictor gives the same values as float 0 / 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from samft.model.promptable import PromptableSam
from samft.model.transforms import LONG_SIDE_FILTERS, ResizeLongestSide


class SamPredictor:
    """Holds one image's features and predicts masks for prompts on it."""

    def __init__(self, sam_model: PromptableSam) -> None:
        self.model = sam_model
        # SAM's resize to the input frame (Meta's `SamPredictor.transform`), for callers
        # that move prompts themselves; SAM 2 resizes inside `prepare_image` (None here).
        interpolation = getattr(sam_model, "resize_interpolation", None)
        self.transform = (
            ResizeLongestSide(sam_model.image_size, interpolation)
            if interpolation in LONG_SIDE_FILTERS
            else None
        )
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        """Forget the current image and its features."""
        self.is_image_set = False
        self.features: Any = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    @torch.no_grad()
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an `H x W x 3` uint8 image given in `image_format` ("RGB" or "BGR")."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got '{image_format}'")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"set_image expects an H x W x 3 image, got shape {image.shape}")
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        x = self.model.prepare_image(image)
        self.reset_image()
        self.original_size = (int(image.shape[0]), int(image.shape[1]))
        self.input_size = self.model.input_frame_size(self.original_size)
        self.features = self.model.encode(x)
        self.is_image_set = True

    @torch.no_grad()
    def set_torch_image(
        self, transformed_image: Tensor, original_image_size: Sequence[int]
    ) -> None:
        """Encode a `1 x 3 x h x w` image (RGB, [0, 255]) already in the input frame: long
        side S for SAM, the S x S square for SAM 2."""
        size = self.model.image_size
        shape = tuple(transformed_image.shape)
        square = self.model.input_frame_size((1, size)) == (size, size)
        in_frame = len(shape) == 4 and shape[1] == 3 and max(shape[2:]) == size
        if not in_frame or (square and shape[2] != shape[3]):
            kind = f"{size} x {size}" if square else f"h x w with long side {size}"
            raise ValueError(f"set_torch_image expects 1 x 3 x {kind}, got {shape}")
        self.reset_image()
        self.original_size = (int(original_image_size[0]), int(original_image_size[1]))
        self.input_size = (shape[2], shape[3])
        self.features = self.model.encode(self.model.preprocess(transformed_image))
        self.is_image_set = True

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt set, original frame.

        Args:
            point_coords: `N x 2` (x, y) pixels; point_labels: `N` (1 fg, 0 bg).
            box: `4` (x0, y0, x1, y1) pixels.
            mask_input: `1 x s x s` low-res logits from an earlier call.
            multimask_output: three masks for ambiguous prompts instead of one.
            return_logits: logits instead of boolean masks.

        Returns:
            masks `M x H x W`, IoU predictions `M`, low-res logits `M x s x s`.
        """
        self._require_image()
        coords = labels = boxes = masks = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be given with point_coords")
            given = torch.as_tensor(np.asarray(point_coords, dtype=np.float64))
            coords = self.model.transform_coords(given, self.original_size).to(self.device)
            labels = torch.as_tensor(point_labels, dtype=torch.int, device=self.device)
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None]
        if box is not None:
            given = torch.as_tensor(np.asarray(box, dtype=np.float64)).reshape(-1, 4)
            boxes = self.model.transform_boxes(given, self.original_size).to(self.device)
        if mask_input is not None:
            masks = torch.as_tensor(mask_input, dtype=torch.float, device=self.device)
            if masks.ndim == 3:
                masks = masks[None]

        out_masks, iou, low_res = self.predict_torch(
            coords, labels, boxes, masks, multimask_output, return_logits=return_logits
        )
        return (
            out_masks[0].detach().cpu().numpy(),
            iou[0].detach().cpu().numpy(),
            low_res[0].detach().cpu().numpy(),
        )

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: Tensor | None,
        point_labels: Tensor | None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Masks for B prompt sets at once; prompts already in the input frame.

        Args:
            point_coords: `B x N x 2`; point_labels: `B x N`.
            boxes: `B x 4`.
            mask_input: `B x 1 x s x s` low-res logits.

        Returns:
            masks `B x M x H x W` (original frame), IoU `B x M`, low-res logits
            `B x M x s x s`.
        """
        self._require_image()
        low_res, iou = self.model.decode(
            self.features, point_coords, point_labels, boxes, mask_input, multimask_output
        )[:2]
        masks = self.model.masks_to_original(low_res, self.input_size, self.original_size)
        if self.model.low_res_clamp is not None:  # SAM 2: as Meta's predictor returns them
            low_res = low_res.clamp(-self.model.low_res_clamp, self.model.low_res_clamp)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res

    def get_image_embedding(self) -> Tensor:
        """`1 x C x h x w`: the current image's embedding (for SAM 2 the lowest level,
        `no_mem_embed` added, as Meta's predictor gives it)."""
        self._require_image()
        return self.features if isinstance(self.features, Tensor) else self.features.image_embed

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("set an image with set_image(...) before predicting")

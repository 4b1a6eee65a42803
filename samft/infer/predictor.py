"""Prompted inference with the official `SamPredictor` API, on samft's `Sam`.

Encode an image once with `set_image`, then call `predict` as often as needed with
points, a box and/or a previous low-res mask. Prompts to `predict` are in the original
image frame (pixels, x/y); `predict_torch` takes them already in the input frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from samft.model.sam import Sam
from samft.model.transforms import ResizeLongestSide


class SamPredictor:
    """Holds one image's embedding and predicts masks for prompts on it."""

    def __init__(self, sam_model: Sam) -> None:
        self.model = sam_model
        self.transform = ResizeLongestSide(
            sam_model.image_encoder.img_size, getattr(sam_model, "resize_interpolation", "bilinear")
        )
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.is_image_set = False
        self.features: Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an `H x W x 3` uint8 image given in `image_format` ("RGB" or "BGR")."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got '{image_format}'")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"set_image expects an H x W x 3 image, got shape {image.shape}")
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        resized = self.transform.apply_image(image)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()
        self.set_torch_image(tensor[None], image.shape[:2])

    @torch.no_grad()
    def set_torch_image(
        self, transformed_image: Tensor, original_image_size: Sequence[int]
    ) -> None:
        """Encode a `1 x 3 x h x w` image already resized to long side S (input frame)."""
        size = self.model.image_encoder.img_size
        shape = tuple(transformed_image.shape)
        if len(shape) != 4 or shape[1] != 3 or max(shape[2:]) != size:
            raise ValueError(
                f"set_torch_image expects 1 x 3 x h x w with long side {size}, got {shape}"
            )
        self.reset_image()
        self.original_size = (int(original_image_size[0]), int(original_image_size[1]))
        self.input_size = (shape[2], shape[3])
        self.features = self.model.image_encoder(self.model.preprocess(transformed_image))
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
            moved = self.transform.apply_coords(point_coords, self.original_size)
            coords = torch.as_tensor(moved, dtype=torch.float, device=self.device)[None]
            labels = torch.as_tensor(point_labels, dtype=torch.int, device=self.device)[None]
        if box is not None:
            moved = self.transform.apply_boxes(box, self.original_size)
            boxes = torch.as_tensor(moved, dtype=torch.float, device=self.device)[None, :]
        if mask_input is not None:
            masks = torch.as_tensor(mask_input, dtype=torch.float, device=self.device)[None]

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
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        low_res, iou = self.model.mask_decoder(
            image_embeddings=self.features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )
        masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res

    def get_image_embedding(self) -> Tensor:
        """`1 x C x h x w`: the current image's embedding."""
        self._require_image()
        return self.features

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("set an image with set_image(...) before predicting")

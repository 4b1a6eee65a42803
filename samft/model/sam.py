"""`Sam`: the three parts together, plus the pixel pre- and post-processing around them.

Frames: the *original* image (H x W) is resized so its long side is S (the *input* frame,
h x w, see `samft.model.transforms.ResizeLongestSide`), then `preprocess` pads it bottom-right
to the S x S square the encoder sees. Low-res logits come back as 4h' x 4w' (h' x w'
the image embedding; S/4 for SAM's ViT) and `postprocess_masks` undoes both steps.

Pixel normalisation belongs to the model variant (`Sam.normalization`):

* "mean_std" (SAM, MobileSAM): `(x - pixel_mean) / pixel_std` per channel, on [0, 255].
* "min_max" (LiteMedSAM): per image, `(x - min) / max(max - min, 1e-8)` over all channels
  and pixels of the resized image, giving [0, 1] whatever the input range.

Both run on the resized image before padding, so the zero padding never enters the
statistics and stays zero.

`input_frame_size`, `prepare_image`, `encode`, `transform_coords` / `transform_boxes`,
`decode` and `masks_to_original` are the interface prompted inference shares with SAM 2
(`samft.model.promptable`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samft.model.image_encoder import ImageEncoderViT
from samft.model.mask_decoder import MaskDecoder
from samft.model.prompt_encoder import PromptEncoder
from samft.model.tiny_vit import TinyViT
from samft.model.transformer import PreparedImage
from samft.model.transforms import ResizeLongestSide, input_shape

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
NORMALIZATIONS = ("mean_std", "min_max")
MIN_MAX_EPS = 1e-8  # LiteMedSAM's lower bound on the max - min range


class Sam(nn.Module):
    """Segment Anything: image encoder, prompt encoder and mask decoder.

    `pixel_mean` / `pixel_std` are non-persistent buffers (not in the state dict), as in
    the official model, so checkpoints stay interchangeable; they are used only when
    `normalization` is "mean_std" (see the module docstring). `normalization` is a plain
    attribute, for code that must reproduce the preprocessing elsewhere (export sidecars),
    like `resize_interpolation`, the filter that brings an image to the input frame
    (`samft.model.transforms.RESIZE_FILTERS`).
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"
    low_res_clamp: float | None = None  # SAM's predictor returns its low-res logits as they are
    # the thresholds of Meta's SamAutomaticMaskGenerator (`samft.infer.automatic`)
    automatic_thresholds: Mapping[str, float] = MappingProxyType(
        {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95}
    )
    # its min_mask_region_area: holes and islands of the kept masks, then NMS again
    automatic_region_cleanup: bool = True

    def __init__(
        self,
        image_encoder: ImageEncoderViT | TinyViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
        normalization: str = "mean_std",
        resize_interpolation: str = "bilinear",
    ) -> None:
        super().__init__()
        self.resize_interpolation = resize_interpolation
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"unknown normalization '{normalization}'; expected one of {NORMALIZATIONS}"
            )
        self.normalization = normalization
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def image_size(self) -> int:
        """S: the side of the square the image encoder takes."""
        return self.image_encoder.img_size

    def preprocess(self, x: Tensor) -> Tensor:
        """`B x 3 x h x w` float RGB in [0, 255] (input frame) -> `B x 3 x S x S`.

        Normalises each image as `self.normalization` says, then pads bottom and right
        with zeros.
        """
        h, w = x.shape[-2:]
        if h > self.image_size or w > self.image_size:
            raise ValueError(
                f"image of size {h} x {w} is larger than the model input {self.image_size}; "
                "resize it with ResizeLongestSide first"
            )
        if self.normalization == "min_max":
            low = x.amin(dim=(-3, -2, -1), keepdim=True)
            high = x.amax(dim=(-3, -2, -1), keepdim=True)
            x = (x - low) / (high - low).clamp_min(MIN_MAX_EPS)
        else:
            x = (x - self.pixel_mean) / self.pixel_std
        return F.pad(x, (0, self.image_size - w, 0, self.image_size - h))

    def postprocess_masks(
        self,
        masks: Tensor,
        input_size: Sequence[int],
        original_size: Sequence[int],
    ) -> Tensor:
        """Low-res logits `B x C x s x s` -> logits `B x C x H x W` in the original frame.

        Upsample to the padded square S x S, crop the padding to the input size `(h, w)`,
        then resize to the original size `(H, W)`; bilinear, as the official model.
        """
        size = self.image_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        masks = masks[..., : int(input_size[0]), : int(input_size[1])]
        original = (int(original_size[0]), int(original_size[1]))
        return F.interpolate(masks, original, mode="bilinear", align_corners=False)

    # --- the interface shared with SAM 2 (samft.model.promptable) ---------------------------

    def input_frame_size(self, original_size: Sequence[int]) -> tuple[int, int]:
        """(h, w): an H x W image with its long side scaled to S."""
        return input_shape(int(original_size[0]), int(original_size[1]), self.image_size)

    def prepare_image(self, image: np.ndarray) -> Tensor:
        """`H x W x 3` uint8 RGB (original frame) -> `1 x 3 x S x S` encoder input: resized
        to long side S with the family's filter (PIL bilinear as the official
        `ResizeLongestSide`, or area), normalised, padded."""
        resized = ResizeLongestSide(self.image_size, self.resize_interpolation).apply_image(image)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()
        return self.preprocess(tensor[None])

    def encode(self, x: Tensor) -> Tensor:
        """`B x 3 x S x S` encoder input -> image embeddings `B x C x S/16 x S/16`."""
        return self.image_encoder(x)

    def transform_coords(self, coords: Tensor, original_size: Sequence[int]) -> Tensor:
        """`... x 2` (x, y) pixels, original frame (H, W) -> float32, input frame. The scale
        is applied in float64, as the official predictor's numpy transform does."""
        h, w = int(original_size[0]), int(original_size[1])
        new_h, new_w = self.input_frame_size((h, w))
        scale = torch.tensor([new_w / w, new_h / h], dtype=torch.float64, device=coords.device)
        return (coords.to(torch.float64) * scale).to(torch.float32)

    def transform_boxes(self, boxes: Tensor, original_size: Sequence[int]) -> Tensor:
        """`N x 4` boxes (x0, y0, x1, y1), original frame -> `N x 4` float32, input frame."""
        return self.transform_coords(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def decode(
        self,
        features: Tensor,
        point_coords: Tensor | None = None,
        point_labels: Tensor | None = None,
        boxes: Tensor | None = None,
        mask_inputs: Tensor | None = None,
        multimask_output: bool = True,
        image_index: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Masks for N prompts, coordinates in the input frame, as the official predictor.

        Args:
            features: `encode` of one image (`1 x C x h' x w'`, shared by all prompts) or
                of B images with `image_index`.
            point_coords, point_labels: `N x P x 2` and `N x P`, or None.
            boxes: `N x 4` (x0, y0, x1, y1), or None: embedded as a box, after the points.
            mask_inputs: `N x 1 x 4h' x 4w'` low-res logits, or None.
            multimask_output: the 3 multimask outputs instead of the single one.
            image_index: LongTensor `N`, each prompt's image in `features`.

        Returns:
            low-res logits `N x M x 4h' x 4w'` and IoU predictions `N x M` (M = 3 or 1).
        """
        points = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must come with point_coords")
            points = (point_coords, point_labels)
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_inputs)
        return self.mask_decoder(
            image_embeddings=features,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            image_index=image_index,
        )

    def masks_to_original(
        self, low_res: Tensor, input_size: Sequence[int], original_size: Sequence[int]
    ) -> Tensor:
        """`postprocess_masks`: low-res logits -> logits `N x M x H x W`, original frame."""
        return self.postprocess_masks(low_res, input_size, original_size)

    # --- what the automatic mask generator adds (samft.infer.automatic) ------------------

    def transform_grid_points(self, points: np.ndarray, original_size: Sequence[int]) -> Tensor:
        """`P x 2` grid points (x, y) pixels, original frame -> `P x 2` float64, input frame,
        on the model's device: the official generator scales them in numpy's float64."""
        h, w = int(original_size[0]), int(original_size[1])
        new_h, new_w = self.input_frame_size((h, w))
        scale = torch.tensor([new_w / w, new_h / h], dtype=torch.float64)
        coords = torch.as_tensor(points, dtype=torch.float64) * scale
        return coords.to(self.device)

    def prepare_decoder(self, features: Tensor) -> PreparedImage:
        """One image's (`encode`: `1 x C x h' x w'`) prompt-independent decoder work, for
        any number of `decode_prepared` calls of prompts without a mask prompt."""
        _, dense = self.prompt_encoder(points=None, boxes=None, masks=None)  # 1 x C x h' x w'
        pe = self.prompt_encoder.get_dense_pe()
        return self.mask_decoder.prepare_image(features, pe, dense)

    def decode_prepared(
        self,
        prepared: PreparedImage,
        point_coords: Tensor,
        point_labels: Tensor,
        multimask_output: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """`decode` of N click prompts (`N x P x 2`, `N x P`, input frame) on a prepared
        image: low-res logits `N x M x 4h' x 4w'` and IoU predictions `N x M`; only the M
        masks asked for are computed."""
        sparse = self.sparse_embeddings((point_coords, point_labels), None)
        return self.mask_decoder.predict_prepared(prepared, sparse, multimask_output)

    # --- the interface batched training shares with SAM 2 (samft.model.batched) ----------

    def sparse_embeddings(
        self, points: tuple[Tensor, Tensor] | None, boxes: Tensor | None
    ) -> Tensor:
        """`N x T x C` prompt tokens as the official predictor lays them out: the clicks
        (`N x P x 2`, `N x P`, input frame), a padding point when there is no box, then
        the box (`N x 4`) as its own two corner embeddings."""
        return self.prompt_encoder(points=points, boxes=boxes, masks=None)[0]

    def decode_all(
        self, features: Tensor, sparse: Tensor, dense: Tensor, image_index: Tensor
    ) -> tuple[Tensor, Tensor, None]:
        """All outputs for N prompts of B images (`features` B x C x h' x w', `sparse`
        N x T x C, `dense` N x C x h' x w', `image_index` N): low-res logits
        `N x 4 x 4h' x 4w'` (output 0 the single mask, 1..3 the multimask ones), IoU
        predictions `N x 4`, and None (SAM has no object score)."""
        masks, scores = self.mask_decoder.predict_masks(
            features, self.prompt_encoder.get_dense_pe(), sparse, dense, image_index
        )
        return masks, scores, None

    def frozen_with_encoder(self) -> list[nn.Parameter]:
        """Parameters outside `image_encoder` that `encode` uses: none."""
        return []

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """Every tensor `encode`'s output depends on: the image encoder's state dict."""
        return self.image_encoder.state_dict()

    @staticmethod
    def to_cached(features: Tensor) -> Tensor:
        """What the embedding cache stores: the embedding itself (`C x S/16 x S/16`, in
        fp16 2 MiB per image at S = 1024)."""
        return features

    def from_cached(self, cached: Tensor) -> Tensor:
        """Stacked cached embeddings (`B x C x h' x w'`, fp16) in the model's dtype."""
        return cached.to(self.pixel_mean.dtype)

    # --- what the instance head reads (samft.model.instance_head) -----------------------

    instance_skip_channels: tuple[int, ...] = ()  # one embedding, no finer level

    @staticmethod
    def instance_features(features: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """`encode`'s output (`B x C x h' x w'`) -> what the instance head reads: the
        embedding itself and no skips."""
        return features, ()

    @torch.no_grad()
    def forward(
        self, batched_input: list[dict[str, Any]], multimask_output: bool
    ) -> list[dict[str, Tensor]]:
        """End-to-end prediction with the official `Sam.forward` inputs and outputs.

        Each record holds `image` (`3 x h x w`, input frame), `original_size` (H, W), and
        optionally `point_coords` `N x P x 2` with `point_labels` `N x P`, `boxes` `N x 4`
        (input frame) and `mask_inputs` `N x 1 x s x s`. Each output holds boolean `masks`
        `N x M x H x W`, `iou_predictions` `N x M` and `low_res_logits` `N x M x s x s`.
        Training calls the parts directly instead (this runs without autograd).
        """
        images = torch.stack([self.preprocess(record["image"]) for record in batched_input])
        embeddings = self.image_encoder(images)
        dense_pe = self.prompt_encoder.get_dense_pe()

        outputs = []
        for record, embedding in zip(batched_input, embeddings, strict=True):
            points = None
            if "point_coords" in record:
                points = (record["point_coords"], record["point_labels"])
            sparse, dense = self.prompt_encoder(
                points=points, boxes=record.get("boxes"), masks=record.get("mask_inputs")
            )
            low_res, iou = self.mask_decoder(
                image_embeddings=embedding[None],
                image_pe=dense_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            masks = self.postprocess_masks(
                low_res, record["image"].shape[-2:], record["original_size"]
            )
            outputs.append(
                {
                    "masks": masks > self.mask_threshold,
                    "iou_predictions": iou,
                    "low_res_logits": low_res,
                }
            )
        return outputs

"""`Sam2`: SAM 2's image model (Hiera encoder, prompt encoder, mask decoder) and the pixel
pre- and post-processing around it.

Frames: the *original* image (H x W) is resized, without keeping its aspect ratio, to the
`S x S` square the encoder sees (the *input* frame): x scales by S / W, y by S / H
(`transform_coords`). Low-res logits are `S/4 x S/4` over that square and
`postprocess_masks` resizes them straight back to H x W. Pixels go to [0, 1], are resized
bilinearly with antialiasing, then normalised with ImageNet's mean and std.

`input_frame_size`, `prepare_image`, `encode`, `transform_coords` / `transform_boxes`,
`decode` and `masks_to_original` are the interface prompted inference shares with SAM
(`samft.model.promptable`); `sparse_embeddings`, `decode_all`, `frozen_with_encoder`,
`encoder_state_dict`, `to_cached` / `from_cached` the one batched training and the
embedding cache share (`samft.model.batched`); `instance_features` and
`instance_skip_channels` what the instance head reads (`samft.model.instance_head`).
Training data comes in this model's input frame: the data pipeline resizes images and masks
to the S x S square (`resize_interpolation`), so prompts drawn from the masks need no
mapping.

The state dict is Meta's (`image_encoder.trunk.*`, `image_encoder.neck.*`,
`sam_prompt_encoder.*`, `sam_mask_decoder.*`, `no_mem_embed`), plus the video model's
tensors, carried unchanged when a checkpoint has them (`samft.model.sam2.carried`), so an
export loads strictly in Meta's `build_sam2` and `build_sam2_video_predictor`.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samft.model.prompt_encoder import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, PromptEncoder
from samft.model.sam2.carried import CarriedTensors
from samft.model.sam2.image_encoder import Sam2ImageEncoder
from samft.model.sam2.mask_decoder import PreparedSam2Image, Sam2MaskDecoder
from samft.model.transforms import SQUARE_RESIZE

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # of [0, 1] pixels
IMAGENET_STD = (0.229, 0.224, 0.225)
LOW_RES_CLAMP = 32.0  # Meta's image predictor clamps the low-res logits it returns to +-this
# the thresholds of Meta's SAM2AutomaticMaskGenerator (SAM's generator: 0.88 / 0.95)
AUTOMATIC_THRESHOLDS = MappingProxyType({"pred_iou_thresh": 0.8, "stability_score_thresh": 0.95})


class Sam2Features(NamedTuple):
    """What `Sam2.encode` gives the decoder for B images (S the input side).

    image_embed: `B x C x S/16 x S/16`, the lowest FPN level kept, `no_mem_embed` added
    high_res:    (`B x C/8 x S/4 x S/4`, `B x C/4 x S/8 x S/8`): the two higher levels
                 through the decoder's `conv_s0` / `conv_s1`
    """

    image_embed: Tensor
    high_res: tuple[Tensor, Tensor]

    def to_tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """(image_embed, high_res[0], high_res[1]): the three levels, as the cache stores
        them."""
        return (self.image_embed, *self.high_res)

    @classmethod
    def from_tensors(cls, tensors: Sequence[Tensor]) -> Sam2Features:
        """The inverse of `to_tensors`."""
        image_embed, s0, s1 = tensors
        return cls(image_embed, (s0, s1))


class Sam2(nn.Module):
    """SAM 2's image model.

    Args:
        image_encoder: Hiera trunk and FPN neck (`Sam2ImageEncoder`).
        sam_prompt_encoder: samft's `PromptEncoder` (SAM 2's is the same).
        sam_mask_decoder: `Sam2MaskDecoder`.
        image_size: S, the side of the square input.
        directly_add_no_mem_embed: add `no_mem_embed` to the image embedding, as SAM 2
            does for an image without memory (all released configs).
        pixel_mean, pixel_std: per-channel statistics of [0, 1] pixels (non-persistent).
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"
    low_res_clamp: float | None = LOW_RES_CLAMP
    automatic_thresholds: Mapping[str, float] = AUTOMATIC_THRESHOLDS  # `samft.infer.automatic`
    # Meta's SAM 2 generator cleans small regions on the low-res logits instead (a CUDA
    # extension), which samft does not reproduce: min_mask_region_area is refused
    automatic_region_cleanup: bool = False
    normalization: str = "imagenet"  # [0, 1] pixels, ImageNet mean/std (`preprocess`)
    resize_interpolation: str = SQUARE_RESIZE  # to the S x S square (`samft.model.transforms`)

    def __init__(
        self,
        image_encoder: Sam2ImageEncoder,
        sam_prompt_encoder: PromptEncoder,
        sam_mask_decoder: Sam2MaskDecoder,
        image_size: int = 1024,
        directly_add_no_mem_embed: bool = True,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.sam_prompt_encoder = sam_prompt_encoder
        self.sam_mask_decoder = sam_mask_decoder
        self.image_size = int(image_size)
        self.directly_add_no_mem_embed = directly_add_no_mem_embed
        dim = sam_mask_decoder.transformer_dim
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.no_mem_embed, std=0.02)
        self.video_parts = CarriedTensors()  # not a module: never moved, cast or trained
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.no_mem_embed.device

    @property
    def prompt_encoder(self) -> PromptEncoder:
        """`sam_prompt_encoder`, by the name samft's `Sam` uses."""
        return self.sam_prompt_encoder

    @property
    def mask_decoder(self) -> Sam2MaskDecoder:
        """`sam_mask_decoder`, by the name samft's `Sam` uses."""
        return self.sam_mask_decoder

    def preprocess(self, images: Tensor) -> Tensor:
        """`B x 3 x H x W` RGB in [0, 255] (uint8 or float, original frame) ->
        `B x 3 x S x S` normalised input: to [0, 1], resized (bilinear, antialiased),
        minus mean over std."""
        x = images.float() / 255
        size = (self.image_size, self.image_size)
        x = F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)
        return self.normalize(x)

    def normalize(self, pixels: Tensor) -> Tensor:
        """`B x 3 x h x w` [0, 1] RGB -> minus mean over std (`preprocess`'s last step)."""
        return (pixels - self.pixel_mean) / self.pixel_std

    def encode(self, x: Tensor) -> Sam2Features:
        """`B x 3 x S x S` preprocessed images -> the decoder's features (`Sam2Features`)."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"SAM 2 encoder expects B x 3 x {self.image_size} x {self.image_size} input "
                f"(Sam2.preprocess resizes to it), got {tuple(x.shape)}"
            )
        level0, level1, embed = self.image_encoder(x)
        if self.directly_add_no_mem_embed:
            embed = embed + self.no_mem_embed.reshape(1, -1, 1, 1)
        return Sam2Features(embed, self.sam_mask_decoder.project_high_res(level0, level1))

    def decode(
        self,
        features: Sam2Features,
        point_coords: Tensor | None = None,
        point_labels: Tensor | None = None,
        boxes: Tensor | None = None,
        mask_inputs: Tensor | None = None,
        multimask_output: bool = True,
        image_index: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Masks for N prompts, all coordinates in the input frame (S x S, pixels, x y).

        Args:
            features: `encode` of one image (shared by all prompts) or of B images with
                `image_index`.
            point_coords, point_labels: `N x P x 2` and `N x P` (1 positive, 0 negative,
                -1 padding), or None.
            boxes: `N x 4` (x0, y0, x1, y1), or None. A box becomes two points labelled
                2 and 3 before the clicks, as Meta's predictor sends it; a padding point
                always ends the points.
            mask_inputs: `N x 1 x S/4 x S/4` low-res logits (a previous answer), or None.
            multimask_output: the 3 multimask outputs instead of the single one.
            image_index: LongTensor `N`, each prompt's image in `features`.

        Returns:
            low-res logits `N x M x S/4 x S/4`, IoU predictions `N x M` (M = 3 or 1) and
            object-score logits `N x 1`.
        """
        points = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must come with point_coords")
            points = (point_coords, point_labels)
        sparse, dense = self.sam_prompt_encoder(
            points=self._prompt_points(points, boxes), boxes=None, masks=mask_inputs
        )
        return self.sam_mask_decoder(
            image_embeddings=features.image_embed,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            high_res_features=features.high_res,
            image_index=image_index,
        )

    def sparse_embeddings(
        self, points: tuple[Tensor, Tensor] | None, boxes: Tensor | None
    ) -> Tensor:
        """`N x T x C` prompt tokens as Meta's predictor lays them out: a box as two
        points labelled 2 and 3, then the clicks (`N x P x 2` coords and `N x P` labels,
        input frame), then one padding point."""
        points = self._prompt_points(points, boxes)
        return self.sam_prompt_encoder(points=points, boxes=None, masks=None)[0]

    @staticmethod
    def _prompt_points(
        points: tuple[Tensor, Tensor] | None, boxes: Tensor | None
    ) -> tuple[Tensor, Tensor] | None:
        """A box (`N x 4`) as two corner points labelled 2 and 3 before the clicks."""
        if boxes is None:
            return points
        corners = boxes.reshape(-1, 2, 2)
        labels = torch.tensor([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], device=boxes.device)
        labels = labels.expand(corners.shape[0], 2)
        if points is not None:
            corners = torch.cat([corners, points[0]], dim=1)
            labels = torch.cat([labels, points[1].to(labels.dtype)], dim=1)
        return corners, labels

    def decode_all(
        self, features: Sam2Features, sparse: Tensor, dense: Tensor, image_index: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """All outputs for N prompts of B images, as the batched loop reads them.

        Args:
            features: `encode` of B images.
            sparse: `N x T x C` (`sparse_embeddings`); dense: `N x C x h x w`.
            image_index: LongTensor `N`, each prompt's image.

        Returns:
            low-res logits `N x 4 x S/4 x S/4` (output 0 the single mask, 1..3 the
            multimask ones), IoU predictions `N x 4` (sigmoid) and object-score logits
            `N x 1`. In eval mode output 0 is what Meta's predictor answers for a single
            mask: the best multimask output where the single one is unstable.
        """
        decoder = self.sam_mask_decoder
        masks, iou_pred, object_score = decoder.predict_masks(
            features.image_embed,
            self.sam_prompt_encoder.get_dense_pe(),
            sparse,
            dense,
            features.high_res,
            image_index,
        )
        if decoder.dynamic_multimask_via_stability and not decoder.training:
            single, single_iou = decoder.stable_single_mask(masks, iou_pred)
            masks = torch.cat([single, masks[:, 1:]], dim=1)
            iou_pred = torch.cat([single_iou, iou_pred[:, 1:]], dim=1)
        return masks, iou_pred, object_score

    def frozen_with_encoder(self) -> list[nn.Parameter]:
        """The parameters outside `image_encoder` that `encode` uses: `no_mem_embed` and
        the decoder's `conv_s0` / `conv_s1` (1 x 1 projections of the two high-resolution
        levels). A frozen encoder freezes them too, so `encode`'s output is fixed and the
        embedding cache can hold it."""
        decoder = self.sam_mask_decoder
        return [self.no_mem_embed, *decoder.conv_s0.parameters(), *decoder.conv_s1.parameters()]

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """Every tensor `encode`'s output depends on (the cache key hashes them): the image
        encoder's state dict and `frozen_with_encoder`'s tensors under their own keys."""
        state = dict(self.image_encoder.state_dict())
        state["no_mem_embed"] = self.no_mem_embed.detach()
        for name in ("conv_s0", "conv_s1"):
            for key, tensor in getattr(self.sam_mask_decoder, name).state_dict().items():
                state[f"sam_mask_decoder.{name}.{key}"] = tensor
        return state

    @staticmethod
    def to_cached(features: Sam2Features) -> tuple[Tensor, Tensor, Tensor]:
        """What the embedding cache stores of one or B images' features: the three levels
        (`Sam2Features.to_tensors`). In fp16 at S = 1024 and C = 256: 64² x 256 +
        256² x 32 + 128² x 64 values, 8 MiB per image (SAM ViT's one level: 2 MiB)."""
        return features.to_tensors()

    def from_cached(self, cached: Sequence[Tensor]) -> Sam2Features:
        """Stacked cached levels (`B x ...` each, fp16) -> the decoder's features in the
        model's dtype."""
        dtype = self.pixel_mean.dtype
        return Sam2Features.from_tensors([t.to(dtype) for t in cached])

    @property
    def instance_skip_channels(self) -> tuple[int, ...]:
        """Channels of `instance_features`' skips: (C/4, C/8), `conv_s1`'s and `conv_s0`'s
        outputs (64 and 32 for every released SAM 2)."""
        decoder = self.sam_mask_decoder
        return (decoder.conv_s1.out_channels, decoder.conv_s0.out_channels)

    @staticmethod
    def instance_features(features: Sam2Features) -> tuple[Tensor, tuple[Tensor, ...]]:
        """`encode`'s output -> what the instance head reads: `image_embed`
        (`B x C x S/16 x S/16`) and, coarsest first, the skips `B x C/4 x S/8 x S/8` and
        `B x C/8 x S/4 x S/4` (`high_res` reversed)."""
        level0, level1 = features.high_res
        return features.image_embed, (level1, level0)

    def input_frame_size(self, original_size: Sequence[int]) -> tuple[int, int]:
        """(S, S): every image is resized to the square, whatever its H x W."""
        return (self.image_size, self.image_size)

    def prepare_image(self, image: np.ndarray) -> Tensor:
        """`H x W x 3` uint8 RGB (original frame) -> `1 x 3 x S x S` encoder input on the
        model's device (`preprocess`)."""
        tensor = torch.from_numpy(np.array(image, order="C")).to(self.device)  # own copy
        return self.preprocess(tensor.permute(2, 0, 1)[None])

    def masks_to_original(
        self, low_res: Tensor, input_size: Sequence[int], original_size: Sequence[int]
    ) -> Tensor:
        """`postprocess_masks` (the input frame is the whole S x S square: nothing to crop)."""
        return self.postprocess_masks(low_res, original_size)

    def postprocess_masks(self, masks: Tensor, original_size: Sequence[int]) -> Tensor:
        """Low-res logits `N x M x S/4 x S/4` -> logits `N x M x H x W` in the original
        frame (bilinear, straight from the square: there is no padding to crop)."""
        size = (int(original_size[0]), int(original_size[1]))
        return F.interpolate(masks.float(), size, mode="bilinear", align_corners=False)

    def transform_coords(self, coords: Tensor, original_size: Sequence[int]) -> Tensor:
        """`... x 2` (x, y) pixels in the original frame (H, W) -> float32, the input frame
        (in float32 arithmetic, as Meta's predictor)."""
        h, w = int(original_size[0]), int(original_size[1])
        coords = coords.to(torch.float32)
        scale = torch.tensor([w, h], dtype=coords.dtype, device=coords.device)
        return coords / scale * self.image_size

    def transform_boxes(self, boxes: Tensor, original_size: Sequence[int]) -> Tensor:
        """`N x 4` boxes (x0, y0, x1, y1) in the original frame -> the input frame."""
        return self.transform_coords(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    # --- what the automatic mask generator adds (samft.infer.automatic) ------------------

    def transform_grid_points(self, points: np.ndarray, original_size: Sequence[int]) -> Tensor:
        """`P x 2` grid points (x, y) pixels, original frame -> `P x 2` float32, input frame,
        on the model's device: Meta's SAM 2 generator takes them to float32 first."""
        coords = torch.as_tensor(points, dtype=torch.float32, device=self.device)
        return self.transform_coords(coords, original_size)

    def prepare_decoder(self, features: Sam2Features) -> PreparedSam2Image:
        """One image's (`encode`) prompt-independent decoder work, for any number of
        `decode_prepared` calls of prompts without a mask prompt."""
        encoder = self.sam_prompt_encoder
        _, dense = encoder(points=None, boxes=None, masks=None)  # 1 x C x S/16 x S/16
        return self.sam_mask_decoder.prepare_image(
            features.image_embed, encoder.get_dense_pe(), dense, features.high_res
        )

    def decode_prepared(
        self,
        prepared: PreparedSam2Image,
        point_coords: Tensor,
        point_labels: Tensor,
        multimask_output: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """`decode` of N click prompts (`N x P x 2`, `N x P`, input frame) on a prepared
        image: low-res logits `N x M x S/4 x S/4` and IoU predictions `N x M` (M = 3, or 1:
        the single mask with its stability fallback)."""
        sparse = self.sparse_embeddings((point_coords, point_labels), None)
        return self.sam_mask_decoder.predict_prepared(prepared, sparse, multimask_output)[:2]

    # The video model's tensors travel with the state dict (module doc).
    def _load_from_state_dict(
        self,
        state_dict: MutableMapping[str, Any],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        missing_keys.extend(self.video_parts.take(state_dict, prefix))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _save_to_state_dict(
        self, destination: MutableMapping[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        self.video_parts.put(destination, prefix)

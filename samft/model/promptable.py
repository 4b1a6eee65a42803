"""The small interface both SAM generations give prompted inference.

`Sam` (SAM, MobileSAM, LiteMedSAM) and `Sam2` (SAM 2) differ at every step between an image
and its masks; each keeps its own steps behind these members, so one predictor
(`samft.infer.predictor.SamPredictor`) serves both:

=====================  ==========================================  =============================
step                   Sam                                         Sam2
=====================  ==========================================  =============================
input_frame_size       long side S, aspect kept                    S x S
prepare_image          PIL (or area) resize, normalise, pad        [0, 1], antialiased resize,
                                                                   ImageNet mean/std
encode                 the ViT / TinyViT embedding                 `Sam2Features` (3 levels)
transform_coords       x, y scaled by the long-side factor         x by S / W, y by S / H
decode                 box as its own embedding                    box as points labelled 2, 3
masks_to_original      upscale, crop the padding, resize           resize straight to H x W
low_res_clamp          None                                        32 (Meta's predictor)
=====================  ==========================================  =============================

The automatic mask generator (`samft.infer.automatic.AutomaticMaskGenerator`) needs a few
more, each what the generation's official generator does:

=====================  ==========================================  =============================
step                   Sam                                         Sam2
=====================  ==========================================  =============================
automatic_thresholds   pred_iou 0.88, stability 0.95               pred_iou 0.8, stability 0.95
automatic_region_      True: holes and islands of the kept masks   False: Meta's runs on the
cleanup                                                            low-res logits (CUDA), not
                                                                   reproduced: refused
transform_grid_points  float64 (numpy's arithmetic)                float32
prepare_decoder        the transformer's image work, once          the same, and the 2 levels
decode_prepared        clicks on it; only the masks asked for      clicks on it; all 4, then
                                                                   `forward`'s choice
=====================  ==========================================  =============================

Frames: the *original* image is H x W; the *input* frame is what the encoder sees
(`input_frame_size`). Prompts go to the model in the input frame, masks come back in the
original frame.

Training, evaluation, the embedding cache (`samft.model.batched`) and the instance head
(`samft.model.instance_head`) need a few more members, `TrainableSam`:

=====================  ==========================================  =============================
step                   Sam                                         Sam2
=====================  ==========================================  =============================
resize_interpolation   PIL bilinear (or area) to long side S       antialiased, to S x S
sparse_embeddings      points, a pad if no box, box embedding      box as points 2, 3, points,
                                                                   a pad
decode_all             4 outputs, IoU                              4 outputs, sigmoid IoU, an
                                                                   object score; eval: output 0
                                                                   as the predictor's single
                                                                   mask (stability fallback)
frozen_with_encoder    nothing                                     `no_mem_embed`, `conv_s0`,
                                                                   `conv_s1`
to_cached/from_cached  the embedding (2 MiB fp16 at 1024)          3 levels (8 MiB fp16)
instance_features      the embedding, no skips                     image_embed, then skips at
(instance_skip_        (skip channels ())                          S/8 (C/4 ch., `conv_s1`) and
channels)                                                          S/4 (C/8 ch., `conv_s0`)
=====================  ==========================================  =============================

The data pipeline serves each model in its own input frame (`resize_interpolation` picks
the frame, `samft.data.resize`): SAM's long side S padded to the square, SAM 2's square.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor


class PromptableSam(Protocol):
    """What `SamPredictor` needs from a model (see the module doc for each generation)."""

    image_size: int  # S
    mask_threshold: float
    image_format: str
    low_res_clamp: float | None  # the predictor clamps the low-res logits it returns
    # the official automatic mask generator's pred_iou_thresh and stability_score_thresh
    automatic_thresholds: Mapping[str, float]
    # whether the official generator's min_mask_region_area is the clean-up samft runs
    automatic_region_cleanup: bool

    @property
    def device(self) -> torch.device: ...

    def input_frame_size(self, original_size: Sequence[int]) -> tuple[int, int]:
        """(h, w) of the input frame for an H x W image."""
        ...

    def prepare_image(self, image: np.ndarray) -> Tensor:
        """`H x W x 3` uint8 RGB (original frame) -> `1 x 3 x S x S` encoder input on the
        model's device."""
        ...

    def preprocess(self, x: Tensor) -> Tensor:
        """`B x 3 x h x w` RGB in [0, 255], input frame -> `B x 3 x S x S` encoder input."""
        ...

    def encode(self, x: Tensor) -> Any:
        """`B x 3 x S x S` encoder input -> the decoder's image features."""
        ...

    def transform_coords(self, coords: Tensor, original_size: Sequence[int]) -> Tensor:
        """`... x 2` (x, y) pixels, original frame -> float32, input frame."""
        ...

    def transform_boxes(self, boxes: Tensor, original_size: Sequence[int]) -> Tensor:
        """`N x 4` (x0, y0, x1, y1), original frame -> `N x 4` float32, input frame."""
        ...

    def decode(
        self,
        features: Any,
        point_coords: Tensor | None = None,
        point_labels: Tensor | None = None,
        boxes: Tensor | None = None,
        mask_inputs: Tensor | None = None,
        multimask_output: bool = True,
        image_index: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        """N prompts (input frame) -> low-res logits `N x M x s x s`, IoU `N x M`, ..."""
        ...

    def masks_to_original(
        self, low_res: Tensor, input_size: Sequence[int], original_size: Sequence[int]
    ) -> Tensor:
        """Low-res logits `N x M x s x s` -> logits `N x M x H x W`, original frame."""
        ...

    def transform_grid_points(self, points: np.ndarray, original_size: Sequence[int]) -> Tensor:
        """`P x 2` float64 (x, y) pixels, original frame -> `P x 2`, input frame, on the
        model's device, in the precision of the generation's official generator."""
        ...

    def prepare_decoder(self, features: Any) -> Any:
        """`encode` of one image -> its prompt-independent decoder work (no mask prompt)."""
        ...

    def decode_prepared(
        self, prepared: Any, point_coords: Tensor, point_labels: Tensor, multimask_output: bool
    ) -> tuple[Tensor, Tensor]:
        """N click prompts (`N x P x 2`, `N x P`, input frame) on a prepared image ->
        low-res logits `N x M x s x s`, IoU `N x M`, as `decode` answers them."""
        ...


class TrainableSam(PromptableSam, Protocol):
    """What the batched training loop, evaluation and the embedding cache need besides
    `PromptableSam` (see the module doc for each generation)."""

    resize_interpolation: str  # how the data pipeline brings images to the input frame

    def sparse_embeddings(
        self, points: tuple[Tensor, Tensor] | None, boxes: Tensor | None
    ) -> Tensor:
        """`N x P x 2` / `N x P` clicks and `N x 4` boxes (input frame) -> `N x T x C`
        tokens in the official predictor's layout."""
        ...

    def decode_all(
        self, features: Any, sparse: Tensor, dense: Tensor, image_index: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """N prompts on B images -> low-res logits `N x 4 x s x s` (single mask, then the
        three multimask outputs), IoU `N x 4`, object-score logits `N x 1` or None."""
        ...

    def frozen_with_encoder(self) -> list[torch.nn.Parameter]:
        """Parameters outside `image_encoder` that `encode` uses (frozen with it)."""
        ...

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """Every tensor `encode`'s output depends on (hashed into the cache key)."""
        ...

    def to_cached(self, features: Any) -> Tensor | tuple[Tensor, ...]:
        """`encode`'s output as the tensors the embedding cache stores."""
        ...

    def from_cached(self, cached: Any) -> Any:
        """Stacked cached tensors -> `encode`'s output, in the model's dtype."""
        ...

    @property
    def instance_skip_channels(self) -> tuple[int, ...]:
        """Channels of `instance_features`' skips (the instance head's `skip_channels`)."""
        ...

    def instance_features(self, features: Any) -> tuple[Tensor, tuple[Tensor, ...]]:
        """`encode`'s (or `from_cached`'s) output -> what the instance head reads: the
        `B x C x h' x w'` embedding and the finer maps at 2x, 4x, ... its resolution,
        coarsest first (`samft.model.instance_head`)."""
        ...

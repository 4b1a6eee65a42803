"""SAM 2's image model in samft's own code, with Meta's `sam2` state-dict layout.

One part per file: `hiera` (the trunk), `image_encoder` (FPN neck, trunk + neck),
`mask_decoder` (SAM's decoder plus high-res features and an object score), `carried` (the
video model's tensors, kept through load and save) and `model` (`Sam2`: preprocess,
encode, decode, postprocess). The prompt encoder is samft's `PromptEncoder`, which SAM 2
shares with SAM. Variants are wired in `samft.model.registry`.
"""

from samft.model.sam2.carried import VIDEO_PARTS, CarriedTensors
from samft.model.sam2.hiera import Hiera
from samft.model.sam2.image_encoder import FpnNeck, Sam2ImageEncoder
from samft.model.sam2.mask_decoder import Sam2MaskDecoder, two_way_transformer
from samft.model.sam2.model import IMAGENET_MEAN, IMAGENET_STD, Sam2, Sam2Features

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VIDEO_PARTS",
    "CarriedTensors",
    "FpnNeck",
    "Hiera",
    "Sam2",
    "Sam2Features",
    "Sam2ImageEncoder",
    "Sam2MaskDecoder",
    "two_way_transformer",
]

"""The SAM network in samft's own code, with the official state-dict layout."""

from samft.model.image_encoder import ImageEncoderViT
from samft.model.mask_decoder import MaskDecoder
from samft.model.prompt_encoder import PromptEncoder
from samft.model.registry import VARIANTS, SamHyperParams, TinyViTHyperParams, build_sam
from samft.model.sam import Sam
from samft.model.tiny_vit import TinyViT
from samft.model.transformer import TwoWayTransformer

__all__ = [
    "VARIANTS",
    "ImageEncoderViT",
    "MaskDecoder",
    "PromptEncoder",
    "Sam",
    "SamHyperParams",
    "TinyViT",
    "TinyViTHyperParams",
    "TwoWayTransformer",
    "build_sam",
]

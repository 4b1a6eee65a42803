"""ONNX export: the image encoder as one model, prompts-to-masks as another.

The decoder model has the interface of Meta's browser demo, so their front ends run it
unchanged:

    inputs   image_embeddings  1 x C x h x w   float32, from the encoder model
             point_coords      1 x N x 2       float32 (x, y), INPUT frame (long side S)
             point_labels      1 x N           float32: 1 fg, 0 bg, 2/3 box corners, -1 pad
             mask_input        1 x 1 x 4h x 4w float32 low-res logits (zeros when unused)
             has_mask_input    1               float32, 1 when `mask_input` is used
             orig_im_size      2               float32 (H, W) of the original image
    outputs  masks             1 x M x H x W   logits in the original frame (> 0: object)
             iou_predictions   1 x M
             low_res_masks     1 x M x 4h x 4w logits

N is dynamic. Like the demo, the caller appends the padding point (0, 0) with label -1
when there is no box; the model adds nothing itself. With `return_single_mask` (the
demo's setting) M = 1: the best of the three multimask outputs for a single click
(N <= 2 with its padding point), the single-mask output for more points, as the official
predictor would choose.

The encoder model takes `image 1 x 3 x h x w` float32 RGB in [0, 255], already resized
so its long side is S (`samft.model.transforms.ResizeLongestSide`), with dynamic h and w, and
normalises and pads it itself (`Sam.preprocess`).

SAM 2 (a `Sam2`) exports the same two models with its three feature levels:

    decoder  image_embeddings  1 x C x S/16 x S/16   the S/16 level, `no_mem_embed` added
             high_res_feats_0  1 x C/8 x S/4 x S/4   the S/4 level through `conv_s0`
             high_res_feats_1  1 x C/4 x S/8 x S/8   the S/8 level through `conv_s1`
             point_coords, point_labels, mask_input (1 x 1 x S/4 x S/4), has_mask_input,
             orig_im_size      as above; points in SAM 2's input frame, the S x S square:
                               (x * S / W, y * S / H). A box is two points labelled 2 and 3
                               before the clicks, and the padding point (0, 0) with label
                               -1 always ends the points (as Meta's predictor sends them).
    outputs  masks             1 x M x H x W   logits, resized straight from the square
             iou_predictions   1 x M
             low_res_masks     1 x M x S/4 x S/4, clamped to +-32 as Meta's predictor
                               returns them (feed them back as `mask_input`)
             object_score_logits 1 x 1         > 0: the object is in the image

With `return_single_mask`, M = 1 chosen as for SAM (best multimask output for one click,
else output 0, which for SAM 2 is already Meta's single-mask answer with its stability
fallback); without it, M = 4. The encoder model takes `image 1 x 3 x S x S` float32 RGB in
[0, 255], already resized to the square (bilinear with antialiasing, as
`torch.nn.functional.interpolate(..., antialias=True)`: ONNX opset 17 has no
antialiased resize), and returns the three levels under the decoder's input names.

The wrappers call the parts of samft's `Sam` / `Sam2`; nothing of the pre- or
post-processing is re-implemented except where tracing needs the sizes as tensors.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samft.model.sam import Sam
from samft.model.sam2 import Sam2, Sam2Features

OPSET = 17
DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
SAM2_FEATURES = ("image_embeddings", "high_res_feats_0", "high_res_feats_1")
SAM2_DECODER_INPUTS = (*SAM2_FEATURES, *DECODER_INPUTS[1:])
SAM2_DECODER_OUTPUTS = (*DECODER_OUTPUTS, "object_score_logits")
ONNX_MISSING = (
    'format=onnx needs the onnx package, which is not installed: pip install "samft[onnx]" '
    "(onnx and onnxruntime)"
)


def onnx_installed() -> bool:
    return importlib.util.find_spec("onnx") is not None


def require_onnx() -> None:
    """An ImportError with the install command when `onnx` is missing, before any tracing
    (torch only says "Module onnx is not installed!", after tracing the model)."""
    if not onnx_installed():
        raise ImportError(ONNX_MISSING)


class PromptMaskDecoderOnnx(nn.Module):
    """Prompt encoder + mask decoder + mask postprocessing in one traceable graph."""

    def __init__(self, sam: Sam, return_single_mask: bool = True) -> None:
        super().__init__()
        self.sam = sam
        self.return_single_mask = return_single_mask

    @property
    def image_size(self) -> int:
        return self.sam.image_size

    def embed_points(self, point_coords: Tensor, point_labels: Tensor) -> Tensor:
        """`1 x N x 2`, `1 x N` -> sparse tokens `1 x N x C`, without the padding the
        Python prompt encoder appends (the caller supplies it)."""
        pe = self.sam.prompt_encoder
        size = float(self.image_size)
        encoded = pe.pe_layer.forward_with_coords(point_coords + 0.5, (size, size))
        labels = point_labels[..., None]
        # arithmetic instead of torch.where keeps the graph free of boolean indexing
        encoded = encoded * (labels != -1) + pe.not_a_point_embed.weight * (labels == -1)
        for label, table in enumerate(pe.point_embeddings):
            encoded = encoded + table.weight * (labels == label)
        return encoded

    def embed_mask(self, mask_input: Tensor, has_mask_input: Tensor) -> Tensor:
        """`1 x 1 x 4h x 4w`, `1` -> dense `1 x C x h x w` (the "no mask" vector when unused)."""
        pe = self.sam.prompt_encoder
        given = pe.mask_downscaling(mask_input) * has_mask_input
        return given + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def postprocess(self, low_res: Tensor, orig_im_size: Tensor) -> Tensor:
        """`1 x M x 4h x 4w` -> `1 x M x H x W`, as `Sam.postprocess_masks` with tensor sizes.

        The input-frame size is recomputed from `orig_im_size` with the rounding of
        `ResizeLongestSide.get_preprocess_shape`, so it stays dynamic in the graph.
        """
        size = self.image_size
        masks = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)
        original = orig_im_size.to(torch.float32)
        input_hw = torch.floor(original * (size / original.max()) + 0.5).to(torch.int64)
        masks = masks[..., : input_hw[0], : input_hw[1]]
        original = original.to(torch.int64)
        return F.interpolate(
            masks, size=(original[0], original[1]), mode="bilinear", align_corners=False
        )

    def select_single_mask(self, masks: Tensor, scores: Tensor, num_points: int) -> tuple:
        """Keep one of the M+1 masks without control flow in the graph.

        One click (with its padding point, N <= 2) is ambiguous, so the best-scoring of
        the multimask outputs 1..M wins; with more points mask 0 (the single-mask output)
        gets a large bonus and always wins.
        """
        bonus = torch.zeros_like(scores[:1])
        bonus[:, 0] = 1000.0
        best = torch.argmax(scores + (num_points - 2.5) * bonus, dim=1)
        rows = torch.arange(masks.shape[0])
        return masks[rows, best][:, None], scores[rows, best][:, None]

    @torch.no_grad()
    def forward(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
        orig_im_size: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        sparse = self.embed_points(point_coords, point_labels)
        dense = self.embed_mask(mask_input, has_mask_input)
        low_res, scores = self.sam.mask_decoder.predict_masks(
            image_embeddings, self.sam.prompt_encoder.get_dense_pe(), sparse, dense
        )
        if self.return_single_mask:
            low_res, scores = self.select_single_mask(low_res, scores, point_coords.shape[1])
        return self.postprocess(low_res, orig_im_size), scores, low_res


class Sam2PromptMaskDecoderOnnx(PromptMaskDecoderOnnx):
    """SAM 2's prompt encoder + mask decoder + postprocessing: the three feature levels
    in, the object score out as well (module doc)."""

    sam: Sam2

    def postprocess(self, low_res: Tensor, orig_im_size: Tensor) -> Tensor:
        """`1 x M x S/4 x S/4` -> `1 x M x H x W`, as `Sam2.postprocess_masks` (the input
        frame is the whole square: nothing to crop) with tensor sizes."""
        original = orig_im_size.to(torch.int64)
        return F.interpolate(
            low_res, size=(original[0], original[1]), mode="bilinear", align_corners=False
        )

    @torch.no_grad()
    def forward(  # type: ignore[override]
        self,
        image_embeddings: Tensor,
        high_res_feats_0: Tensor,
        high_res_feats_1: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
        orig_im_size: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        sparse = self.embed_points(point_coords, point_labels)
        dense = self.embed_mask(mask_input, has_mask_input)
        features = Sam2Features(image_embeddings, (high_res_feats_0, high_res_feats_1))
        image_index = torch.zeros(1, dtype=torch.long)
        low_res, scores, object_score = self.sam.decode_all(features, sparse, dense, image_index)
        if self.return_single_mask:
            low_res, scores = self.select_single_mask(low_res, scores, point_coords.shape[1])
        masks = self.postprocess(low_res, orig_im_size)
        clamp = self.sam.low_res_clamp
        low_res = low_res.clamp(-clamp, clamp) if clamp is not None else low_res
        return masks, scores, low_res, object_score


class Sam2ImageEncoderOnnx(nn.Module):
    """`1 x 3 x S x S` float RGB in [0, 255], already resized to the square -> the three
    feature levels (`Sam2Features.to_tensors`: S/16, S/4, S/8)."""

    def __init__(self, sam: Sam2) -> None:
        super().__init__()
        self.sam = sam

    @torch.no_grad()
    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.sam.encode(self.sam.normalize(image / 255)).to_tensors()


class ImageEncoderOnnx(nn.Module):
    """`1 x 3 x h x w` float RGB in [0, 255], input frame -> `1 x C x S/16 x S/16`."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = sam

    @torch.no_grad()
    def forward(self, image: Tensor) -> Tensor:
        return self.sam.image_encoder(self.sam.preprocess(image))


def decoder_example_inputs(sam: Sam | Sam2, num_points: int = 2) -> tuple[Tensor, ...]:
    """Inputs of the decoder model's shapes, used for tracing and in tests."""
    pe = sam.prompt_encoder
    h, w = pe.image_embedding_size
    size = sam.image_size
    C = pe.embed_dim
    features: tuple[Tensor, ...] = (torch.randn(1, C, h, w),)
    if isinstance(sam, Sam2):
        features += (torch.randn(1, C // 8, 4 * h, 4 * w), torch.randn(1, C // 4, 2 * h, 2 * w))
    return (
        *features,
        torch.randint(0, size, (1, num_points, 2)).float(),
        torch.randint(0, 4, (1, num_points)).float(),
        torch.randn(1, 1, 4 * h, 4 * w),
        torch.tensor([1.0]),
        torch.tensor([size * 0.75, size * 1.0]),
    )


def export_decoder(sam: Sam | Sam2, path: str | Path, return_single_mask: bool = True) -> Path:
    """Write the prompt encoder + mask decoder model (dynamic N) to `path`."""
    if isinstance(sam, Sam2):
        wrapper: nn.Module = Sam2PromptMaskDecoderOnnx(sam, return_single_mask)
        names = (SAM2_DECODER_INPUTS, SAM2_DECODER_OUTPUTS)
    else:
        wrapper = PromptMaskDecoderOnnx(sam, return_single_mask)
        names = (DECODER_INPUTS, DECODER_OUTPUTS)
    dynamic = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    dynamic["masks"] = {2: "height", 3: "width"}
    return _export(
        wrapper.eval(),
        decoder_example_inputs(sam),
        path,
        list(names[0]),
        list(names[1]),
        dynamic,
    )


def export_encoder(sam: Sam | Sam2, path: str | Path) -> Path:
    """Write the image encoder model to `path`: dynamic input height and width for SAM,
    the fixed S x S square for SAM 2."""
    size = sam.image_size
    if isinstance(sam, Sam2):
        example = torch.randint(0, 256, (1, 3, size, size)).float()
        wrapper = Sam2ImageEncoderOnnx(sam).eval()
        return _export(wrapper, (example,), path, ["image"], list(SAM2_FEATURES), {})
    example = torch.randint(0, 256, (1, 3, size, (size * 3) // 4)).float()
    dynamic = {"image": {2: "height", 3: "width"}}
    return _export(
        ImageEncoderOnnx(sam).eval(), (example,), path, ["image"], ["image_embeddings"], dynamic
    )


def export_onnx(
    sam: Sam | Sam2, stem: str | Path, return_single_mask: bool = True
) -> dict[str, Path]:
    """Both models beside each other: `<stem>.encoder.onnx` and `<stem>.decoder.onnx`."""
    require_onnx()
    stem = Path(stem)
    return {
        "encoder": export_encoder(sam, stem.with_name(stem.name + ".encoder.onnx")),
        "decoder": export_decoder(
            sam, stem.with_name(stem.name + ".decoder.onnx"), return_single_mask
        ),
    }


def _export(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: str | Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> Path:
    """Trace `module` to ONNX at `path`, atomically.

    The model is written into a fresh folder beside `path` and moved in place at the end
    (with its external-data files when it is over protobuf's 2 GB limit, e.g. vit_h), so
    an interrupted export leaves no half-written model behind.
    """
    require_onnx()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = next(module.parameters())
    if first.device.type != "cpu" or first.dtype != torch.float32:
        module = copy.deepcopy(module).to("cpu", torch.float32)  # leave the caller's model be
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        with warnings.catch_warnings():
            # tracing warns about every Python int taken from a shape; those are expected
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(scratch / path.name),
                dynamo=False,  # the torch.export path needs onnxscript, not a dependency
                opset_version=OPSET,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        for produced in sorted(scratch.iterdir(), key=lambda p: p.name == path.name):
            os.replace(produced, path.parent / produced.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path

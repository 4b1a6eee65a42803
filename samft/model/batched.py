"""The batched forward that training, evaluation, the embedding cache and automatic masks
all call, for both SAM generations.

Meta's `Sam.forward` loops per image and runs under `no_grad`. Here each image is encoded
once, and every prompt of every image goes through the prompt encoder and mask decoder in
one call per token layout: `image_index` maps each prompt to its image's features, which
are gathered, never copied per prompt. Prompts are laid out exactly as the official
predictor lays them out (`group_prompts`, then the model's `sparse_embeddings`), so a
prompt gives the same masks here as in `SamPredictor`.

Each generation's own steps sit behind the model (`samft.model.promptable.TrainableSam`):
`Sam` encodes to one embedding and embeds a box as a box; `Sam2` encodes to three feature
levels (`no_mem_embed` added, the high-resolution ones through `conv_s0` / `conv_s1`),
sends a box as corner points labelled 2 and 3, and answers with a sigmoid IoU and an
object-score logit.

Frames: images and prompts are in the model's input frame, as the data pipeline serves
them (`samft.data.resize`): long side S, padded bottom/right to the S x S square, for SAM;
the S x S square itself for SAM 2. Low-res logits are S/4 x S/4 over the square; `upscale`
brings them to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from samft.model.prompt_groups import group_prompts
from samft.model.promptable import TrainableSam
from samft.model.prompts import LABEL_PAD, LABEL_POSITIVE, Prompts


@dataclass(frozen=True)
class DecoderOutput:
    """What the decoder says for P prompts.

    low_res:       P x 4 x S/4 x S/4 logits: output 0 is the single-mask answer, 1..3 the
                   multimask answers
    iou_pred:      P x 4 predicted IoU of each output
    answering:     P x 4 bool, the outputs that answer each prompt (see `answering_outputs`)
    object_score:  P x 1 object-score logits (SAM 2), or None (SAM)

    Unpacks as `low_res, iou_pred, answering`, as it did before SAM 2 added object scores.
    """

    low_res: Tensor
    iou_pred: Tensor
    answering: Tensor
    object_score: Tensor | None = None

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.low_res, self.iou_pred, self.answering))

    def predicted_best(self) -> Tensor:
        """P long: the answering output the IoU head scores highest (what inference keeps)."""
        scores = self.iou_pred.detach().masked_fill(~self.answering, float("-inf"))
        return scores.argmax(dim=1)


def encode_images(sam: TrainableSam, images: list[Tensor]) -> Any:
    """B images (uint8 3 x h_i x w_i, input frame, not padded) -> the decoder's features
    for B images (`Sam`: B x C x h' x w'; `Sam2`: `Sam2Features`).

    Normalisation and padding happen in the model's `preprocess`, exactly as at inference.
    Runs with autograd as the caller has it: wrap in `torch.no_grad()` for a frozen encoder.
    """
    return sam.encode(preprocess_images(sam, images))


def preprocess_images(sam: TrainableSam, images: list[Tensor]) -> Tensor:
    """B images (uint8 3 x h_i x w_i, input frame) -> B x 3 x S x S, as the encoder sees
    them (the model's `preprocess`: normalised, and padded for SAM)."""
    return torch.cat([sam.preprocess(img[None].float()) for img in images])


def dense_embeddings(sam: TrainableSam, mask_inputs: Tensor, has_mask_input: Tensor) -> Tensor:
    """P x C x h' x w': the mask prompt's embedding where given, `no_mask_embed` elsewhere."""
    pe = sam.prompt_encoder
    h, w = pe.image_embedding_size
    num = has_mask_input.shape[0]
    dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(num, -1, h, w)
    if has_mask_input.any():
        dense = dense.clone()
        # under autocast the convolutions answer in bf16/fp16 while no_mask_embed is fp32
        downscaled = pe.mask_downscaling(mask_inputs[has_mask_input])
        dense[has_mask_input] = downscaled.to(dense.dtype)
    return dense


def answering_outputs(point_labels: Tensor, multimask_output: bool | str) -> Tensor:
    """P x 4 bool: output 0 (single mask) or outputs 1..3 (multimask) for each prompt.

    `auto` is the SAM paper's rule: a single positive point (the ambiguous prompt) is
    answered by the three multimask outputs, any other prompt by the single-mask output.
    """
    if multimask_output == "auto":
        positives = (point_labels == LABEL_POSITIVE).sum(dim=1)
        others = ((point_labels != LABEL_POSITIVE) & (point_labels != LABEL_PAD)).sum(dim=1)
        ambiguous = (positives == 1) & (others == 0)
    else:
        ambiguous = torch.full_like(point_labels[:, 0], bool(multimask_output), dtype=bool)
    return torch.cat([~ambiguous[:, None], ambiguous[:, None].expand(-1, 3)], dim=1)


def decode(
    sam: TrainableSam,
    embeddings: Any,
    image_index: Tensor,
    prompts: Prompts,
    multimask_output: bool | str,
) -> DecoderOutput:
    """All P prompts on B images (`embeddings`: `encode_images`' features of B images,
    `image_index` P) at once.

    Rows are grouped by token layout so each prompt is embedded exactly as the official
    predictor embeds it; each group is one decoder call over all images, or several calls
    of `prompts_per_call` prompts each for CPU inference.
    """
    num = prompts.labels.shape[0]
    low_res = iou_pred = object_score = None
    per_call = prompts_per_call(sam, image_index.device)
    for group in group_prompts(prompts.coords, prompts.labels):
        sparse = sam.sparse_embeddings(group.points, group.boxes)
        for rows, index in _calls(group.index, per_call):
            dense = dense_embeddings(sam, prompts.mask_inputs[index], prompts.has_mask_input[index])
            masks, scores, objects = sam.decode_all(
                embeddings, sparse[rows], dense, image_index[index]
            )
            if low_res is None:
                low_res = masks.new_empty((num, *masks.shape[1:]))
                iou_pred = scores.new_empty((num, scores.shape[1]))
                if objects is not None:
                    object_score = objects.new_empty((num, objects.shape[1]))
            low_res.index_copy_(0, index, masks)
            iou_pred.index_copy_(0, index, scores)
            if objects is not None:
                object_score.index_copy_(0, index, objects)
    answering = answering_outputs(prompts.labels, multimask_output)
    return DecoderOutput(low_res, iou_pred, answering, object_score)


CPU_CALL_BYTES = 16 * 2**20
"""The largest tensor one CPU decoder call may allocate (see `prompts_per_call`)."""


def prompts_per_call(sam: TrainableSam, device: torch.device) -> int | None:
    """How many prompts one decoder call takes: None (all at once) on an accelerator or
    while autograd records; on the CPU without autograd, as many as keep the call's largest
    tensor, the upscaled mask features (`N x C/8 x 4h' x 4w'` float32, 8 MiB a prompt at
    C = 256 and a 64 x 64 embedding), within `CPU_CALL_BYTES`.

    A call over all prompts at once allocates tensors of hundreds of MiB that the C library
    maps afresh and faults in page by page on every call (system time then rivals compute
    time); calls of a few prompts reuse the same cache-sized blocks. Prompted evaluation of
    LiteMedSAM on this project's 2-core CPU ran 1.4x faster this way
    (`docs/performance.md`, "Prompted eval")."""
    if device.type != "cpu" or torch.is_grad_enabled():
        return None
    encoder = sam.prompt_encoder
    h, w = encoder.image_embedding_size
    per_prompt = 8 * encoder.embed_dim * h * w  # C/8 channels x 16 h' w' pixels x 4 bytes
    return max(1, CPU_CALL_BYTES // per_prompt)


def _calls(index: Tensor, per_call: int | None) -> Iterator[tuple[slice, Tensor]]:
    """A group's rows split into decoder calls: (slice of the group, prompt indices)."""
    step = per_call or max(len(index), 1)
    for start in range(0, len(index), step):
        rows = slice(start, start + step)
        yield rows, index[rows]


def feedback_logits(sam: TrainableSam, low_res: Tensor) -> Tensor:
    """Low-res logits (`P x s x s`) as the model's predictor hands them back for the next
    prompt: clamped to +-`low_res_clamp` for SAM 2 (Meta's predictor), unchanged for SAM."""
    if sam.low_res_clamp is None:
        return low_res
    return low_res.clamp(-sam.low_res_clamp, sam.low_res_clamp)


def upscale(sam: TrainableSam, low_res: Tensor) -> Tensor:
    """Low-res logits P x M x S/4 x S/4 -> P x M x S x S logits on the input square
    (the first step of `Sam.postprocess_masks`; SAM 2's input frame is that square)."""
    size = sam.image_size
    if low_res.shape[-2:] == (size, size):  # bilinear onto the same grid is the identity
        return low_res
    return F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)


def inside_image(sizes: Tensor, size: int) -> Tensor:
    """P x S x S bool, True inside each prompt's image (`sizes` P x 2: its h, w in the input
    frame) and False on the padding of the S x S square (SAM 2: all True, no padding)."""
    rows = torch.arange(size, device=sizes.device)
    inside_h = rows[None, :] < sizes[:, :1]
    inside_w = rows[None, :] < sizes[:, 1:]
    return inside_h[:, :, None] & inside_w[:, None, :]

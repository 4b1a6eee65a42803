"""The training loss of the automatic-mode points (`SamBatch.automatic`).

Each point is prompted alone with the multimask outputs, as the automatic generator prompts
its grid. The IoU head learns each answer's IoU with the instance it matches best
(`best_instance_iou`), so it ranks answers the way automatic mode needs; the masks learn
the instance under the point, and nothing where the point is on the background.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from samft.data.batch import AutomaticPoints
from samft.model import batched
from samft.model.promptable import TrainableSam
from samft.model.prompts import LABEL_POSITIVE, Prompts
from samft.train.automatic_targets import best_instance_iou, containing_instance
from samft.train.losses import LossOutput, SamLoss


def single_point_prompts(points: Tensor, low_res_size: int) -> Prompts:
    """G positive one-point prompts (`points` G x 2, input frame) without mask inputs."""
    num = points.shape[0]
    return Prompts(
        coords=points[:, None, :],
        labels=torch.full((num, 1), LABEL_POSITIVE, dtype=torch.long, device=points.device),
        mask_inputs=points.new_zeros((num, 1, low_res_size, low_res_size)),
        has_mask_input=torch.zeros(num, dtype=torch.bool, device=points.device),
    )


def automatic_point_loss(
    sam: TrainableSam,
    loss_fn: SamLoss,
    embeddings: Any,
    automatic: AutomaticPoints,
    input_sizes: Tensor,
    num_points: float,
) -> LossOutput:
    """The loss of the G points of `automatic` on the batch's images.

    Args:
        sam: the model being trained.
        loss_fn: the module's focal + dice + IoU loss.
        embeddings: the decoder's features of the batch's B images (`batched.encode_images`).
        automatic: the points and their images' instances.
        input_sizes: B x 2 (h, w) of each image in the input frame.
        num_points: the divisor (points summed over ranks / world size).
    """
    size = sam.image_size
    prompts = single_point_prompts(automatic.points, size // 4)
    out = batched.decode(sam, embeddings, automatic.image_index, prompts, multimask_output=True)
    logits = batched.upscale(sam, out.low_res)  # G x 4 x S x S
    valid = batched.inside_image(input_sizes[automatic.image_index], size)
    pred = logits.detach() > sam.mask_threshold
    targets = best_instance_iou(
        pred,
        automatic.image_index,
        automatic.instance_masks,
        automatic.instance_image_index,
        valid,
    )
    owner = containing_instance(
        automatic.points,
        automatic.image_index,
        automatic.instance_masks,
        automatic.instance_image_index,
    )
    on_object = owner >= 0
    gt = torch.zeros_like(valid)  # G x S x S: the instance under each point, else nothing
    gt[on_object] = automatic.instance_masks[owner[on_object]]
    return loss_fn(
        logits,
        out.iou_pred,
        gt,
        valid,
        num_points,
        answering=out.answering,
        iou_targets=targets,
        mask_weights=on_object,
        object_scores=out.object_score,
    )

"""`SamBatch`: what collation hands the training module, for B images and P objects.

A dataclass, so Lightning moves every tensor in it to the device; lists stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from samft.model.prompts import Prompts


@dataclass
class AutomaticPoints:
    """Points for training the automatic mode (`samft.data.automatic`), G over the batch,
    and the N instances of their images that answer them.

    points:                G x 2 float32, (x, y) in the input frame
    image_index:           G long, index of each point's image
    instance_masks:        N x S x S bool, every instance of the batch's images, input frame
    instance_image_index:  N long, index of each instance's image
    """

    points: Tensor
    image_index: Tensor
    instance_masks: Tensor
    instance_image_index: Tensor


@dataclass
class SamBatch:
    """B images and their P objects, with one prompt per object.

    images:              list[B] uint8 3 x h_i x w_i, input frame, not normalised or padded
    input_sizes:         B x 2 long (h_i, w_i)
    image_ids:           list[B] str
    gt_masks:            P x S x S bool, input frame, zero-padded bottom/right
    object_image_index:  P long, index of each object's image
    prompts:             the first round's prompts (`Prompts`: coords P x K x 2 input frame,
                         labels P x K, mask_inputs P x 1 x S/4 x S/4, has_mask_input P)
    prompt_types:        P long (PROMPT_ONE_POINT, PROMPT_POINTS, PROMPT_BOX)
    object_areas:        P float, pixels in the original frame (before the resize)
    embeddings:          from the embedding cache, fp16, or None: B x C x h' x w' (SAM), or
                         SAM 2's three levels, a tuple of B x C x S/16 x S/16,
                         B x C/8 x S/4 x S/4 and B x C/4 x S/8 x S/8
    automatic:           the automatic-mode training points, or None
    instance_labels:     B x S x S int32 id map of every instance (0 background and
                         padding), input frame, or None (`SamDataset(instance_targets=True)`)
    instance_targets:    B x 3 x S x S float32 instance-head targets (`INSTANCE_MAPS`,
                         0 on the padding), or None
    """

    images: list[Tensor]
    input_sizes: Tensor
    image_ids: list[str]
    gt_masks: Tensor
    object_image_index: Tensor
    prompts: Prompts
    prompt_types: Tensor
    object_areas: Tensor
    embeddings: Tensor | tuple[Tensor, ...] | None = None
    automatic: AutomaticPoints | None = None
    instance_labels: Tensor | None = None
    instance_targets: Tensor | None = None

    def __len__(self) -> int:
        """B, the number of images."""
        return len(self.images)

"""Arrange padded prompt rows into the exact token layout of the official predictor.

A batch stores every object's prompt as a row of tokens padded with label -1 (box corners
carry labels 2 and 3). Padding tokens are not masked inside SAM's decoder: they are
`not_a_point` embeddings that take part in attention, so a row's result would depend on how
long the other rows of its batch are. The official predictor embeds points followed by
exactly one padding token when there is no box, and a box with no padding token. Rows are
grouped by (number of real points, has box) and each group is laid out that way, so a prompt
gives the same masks in training, in evaluation and in `SamPredictor`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from samft.model.prompts import LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT, LABEL_PAD


@dataclass
class PromptGroup:
    """Rows `index` of the batch, as official-layout prompt encoder inputs."""

    index: Tensor  # G, rows of the batch
    points: tuple[Tensor, Tensor] | None  # G x N x 2 coords, G x N labels (no padding)
    boxes: Tensor | None  # G x 4 (x0, y0, x1, y1)


def group_prompts(point_coords: Tensor, point_labels: Tensor) -> list[PromptGroup]:
    """P x K x 2 coords and P x K labels -> groups of rows with the same token layout.

    A row must hold either no box or exactly one (one token labelled 2 and one labelled 3).
    """
    corners_tl = point_labels == LABEL_BOX_TOP_LEFT
    corners_br = point_labels == LABEL_BOX_BOTTOM_RIGHT
    has_box = corners_tl.any(dim=1)
    if (corners_tl.sum(1) != has_box.long()).any() or (corners_br.sum(1) != has_box).any():
        raise ValueError("each prompt row needs no box or exactly one pair of corners (2, 3)")
    is_point = (point_labels != LABEL_PAD) & ~corners_tl & ~corners_br
    num_points = is_point.sum(dim=1)
    key = num_points * 2 + has_box.long()
    groups = []
    for value in torch.unique(key).tolist():
        rows = (key == value).nonzero().flatten()
        count, boxed = value // 2, bool(value % 2)
        points = None
        if count > 0:
            # stable sort brings the real point tokens of each row to the front, in order
            order = torch.sort((~is_point[rows]).to(torch.uint8), dim=1, stable=True).indices
            order = order[:, :count]
            coords = torch.gather(point_coords[rows], 1, order[..., None].expand(-1, -1, 2))
            points = (coords, torch.gather(point_labels[rows], 1, order))
        boxes = None
        if boxed:
            tl = point_coords[rows][corners_tl[rows]]  # G x 2
            br = point_coords[rows][corners_br[rows]]
            boxes = torch.cat([tl, br], dim=1)
        groups.append(PromptGroup(rows, points, boxes))
    return groups

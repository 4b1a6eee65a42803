"""Padded prompt rows regroup into the official token layout."""

import pytest
import torch

from samft.model.prompt_groups import group_prompts


def test_groups_by_layout_and_strips_padding():
    coords = torch.tensor(
        [
            [[1.0, 2.0], [0.0, 0.0], [5.0, 6.0]],  # one point, pad, click -> 2 points
            [[3.0, 4.0], [9.0, 9.0], [0.0, 0.0]],  # box corners, pad -> box only
            [[7.0, 8.0], [0.0, 0.0], [0.0, 0.0]],  # one point
            [[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]],  # box + one negative point
        ]
    )
    labels = torch.tensor([[1, -1, 0], [2, 3, -1], [1, -1, -1], [2, 3, 0]])
    groups = {
        (g.points is not None and g.points[0].shape[1], g.boxes is not None): g
        for g in group_prompts(coords, labels)
    }
    assert set(groups) == {(2, False), (False, True), (1, False), (1, True)}
    two = groups[(2, False)]
    assert two.index.tolist() == [0]
    torch.testing.assert_close(two.points[0], torch.tensor([[[1.0, 2.0], [5.0, 6.0]]]))
    assert two.points[1].tolist() == [[1, 0]]
    box = groups[(False, True)]
    assert box.index.tolist() == [1]
    assert box.boxes.tolist() == [[3.0, 4.0, 9.0, 9.0]]
    both = groups[(1, True)]
    assert both.boxes.tolist() == [[1.0, 1.0, 2.0, 2.0]]
    assert both.points[0].tolist() == [[[4.0, 4.0]]] and both.points[1].tolist() == [[0]]


def test_half_a_box_is_an_error():
    with pytest.raises(ValueError, match="exactly one pair of corners"):
        group_prompts(torch.zeros(1, 2, 2), torch.tensor([[2, -1]]))

from __future__ import annotations

import pytest
import torch

ATOL = 1e-4


def _points(batch: int, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.rand(batch, n, 2) * size
    labels = torch.randint(0, 2, (batch, n))
    labels[:, -1] = -1  # a padding point among the real ones
    return coords, labels


def _boxes(batch: int, size: int) -> torch.Tensor:
    xy = torch.rand(batch, 2) * size / 2
    return torch.cat([xy, xy + torch.rand(batch, 2) * size / 2], dim=1)


PROMPTS = {
    "points": lambda s, m: dict(points=_points(3, 4, s), boxes=None, masks=None),
    "boxes": lambda s, m: dict(points=None, boxes=_boxes(3, s), masks=None),
    "points+boxes": lambda s, m: dict(points=_points(3, 2, s), boxes=_boxes(3, s), masks=None),
    "masks": lambda s, m: dict(points=None, boxes=None, masks=torch.randn(3, 1, m, m)),
    "points+masks": lambda s, m: dict(
        points=_points(3, 1, s), boxes=None, masks=torch.randn(3, 1, m, m)
    ),
    "nothing": lambda s, m: dict(points=None, boxes=None, masks=None),
}


@pytest.mark.parametrize("pair_name", ["tiny_pair", "vit_b_pair"])
@pytest.mark.parametrize("kind", sorted(PROMPTS))
def test_prompt_encoder_matches_official(pair_name, kind, request):
    ours, ref = request.getfixturevalue(pair_name)
    prompts = PROMPTS[kind](ours.image_size, ours.prompt_encoder.mask_input_size[0])
    with torch.no_grad():
        sparse, dense = ours.prompt_encoder(**prompts)
        want_sparse, want_dense = ref.prompt_encoder(**prompts)
    assert sparse.shape == want_sparse.shape
    assert dense.shape == want_dense.shape
    torch.testing.assert_close(sparse, want_sparse, atol=ATOL, rtol=0)
    torch.testing.assert_close(dense, want_dense, atol=ATOL, rtol=0)


def test_sparse_token_counts(tiny_pair):
    pe = tiny_pair[0].prompt_encoder
    sparse, dense = pe(points=_points(2, 3, 256), boxes=None, masks=None)
    assert sparse.shape == (2, 3 + 1, 128)  # one padding token when there is no box
    sparse, _ = pe(points=_points(2, 3, 256), boxes=_boxes(2, 256), masks=None)
    assert sparse.shape == (2, 3 + 2, 128)
    sparse, dense = pe(points=None, boxes=None, masks=None)
    assert sparse.shape == (1, 0, 128) and dense.shape == (1, 128, 16, 16)
    torch.testing.assert_close(dense[0, :, 3, 7], pe.no_mask_embed.weight[0])


def test_dense_pe_matches_official(tiny_pair, vit_b_pair):
    for ours, ref in (tiny_pair, vit_b_pair):
        got = ours.prompt_encoder.get_dense_pe()
        torch.testing.assert_close(got, ref.prompt_encoder.get_dense_pe(), atol=1e-5, rtol=0)
        assert got.shape == (
            1,
            ours.prompt_encoder.embed_dim,
            ours.image_size // 16,
            ours.image_size // 16,
        )


def test_box_as_labelled_points_equals_box_path(tiny_pair):
    pe = tiny_pair[0].prompt_encoder
    boxes = _boxes(4, 256)
    with torch.no_grad():
        from_boxes, _ = pe(points=None, boxes=boxes, masks=None)
        corners = boxes.reshape(-1, 2, 2)
        labels = torch.tensor([[2, 3]]).expand(4, 2)
        from_points, _ = pe(points=(corners, labels), boxes=None, masks=None)
    assert from_points.shape == (4, 3, 128)  # the two corners, then a padding token
    torch.testing.assert_close(from_points[:, :2], from_boxes, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        from_points[:, 2], pe.not_a_point_embed.weight.expand(4, -1), atol=0, rtol=0
    )


def test_point_embedding_by_hand(tiny_pair):
    """A positive click is its Fourier encoding plus the positive-point vector."""
    pe = tiny_pair[0].prompt_encoder
    point = torch.tensor([[[63.5, 127.5]]])  # + 0.5 -> (64, 128): (0.25, 0.5) of 256
    sparse, _ = pe(points=(point, torch.tensor([[1]])), boxes=None, masks=None)
    gauss = pe.pe_layer.positional_encoding_gaussian_matrix
    proj = 2 * torch.pi * (torch.tensor([-0.5, 0.0]) @ gauss)
    expected = torch.cat([proj.sin(), proj.cos()]) + pe.point_embeddings[1].weight[0]
    torch.testing.assert_close(sparse[0, 0], expected, atol=1e-5, rtol=0)

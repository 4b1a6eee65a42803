from __future__ import annotations

import pytest
import torch

ATOL = 1e-4


def _decoder_inputs(sam, num_prompts: int, num_images: int = 1):
    pe = sam.prompt_encoder
    h, w = pe.image_embedding_size
    coords = torch.rand(num_prompts, 2, 2) * sam.image_size
    labels = torch.tensor([[1, 0]]).expand(num_prompts, 2)
    with torch.no_grad():
        sparse, dense = pe(points=(coords, labels), boxes=None, masks=None)
    embeddings = torch.randn(num_images, pe.embed_dim, h, w)
    return embeddings, pe.get_dense_pe(), sparse, dense


@pytest.mark.parametrize("pair_name", ["tiny_pair", "vit_b_pair"])
@pytest.mark.parametrize("multimask", [True, False])
def test_mask_decoder_matches_official(pair_name, multimask, request):
    ours, ref = request.getfixturevalue(pair_name)
    args = _decoder_inputs(ours, num_prompts=3)
    with torch.no_grad():
        masks, iou = ours.mask_decoder(*args, multimask_output=multimask)
        want_masks, want_iou = ref.mask_decoder(*args, multimask_output=multimask)
    num = 3 if multimask else 1
    low_res = 4 * ours.prompt_encoder.image_embedding_size[0]
    assert masks.shape == want_masks.shape == (3, num, low_res, low_res)
    assert iou.shape == want_iou.shape == (3, num)
    torch.testing.assert_close(masks, want_masks, atol=ATOL, rtol=0)
    torch.testing.assert_close(iou, want_iou, atol=ATOL, rtol=0)


def test_image_index_batch_equals_per_image_calls(tiny_pair):
    """All prompts of 3 images in one call == one official-style call per image."""
    ours, ref = tiny_pair
    embeddings, image_pe, sparse, dense = _decoder_inputs(ours, num_prompts=7, num_images=3)
    image_index = torch.tensor([0, 2, 1, 0, 2, 2, 1])
    with torch.no_grad():
        masks, iou = ours.mask_decoder(
            embeddings, image_pe, sparse, dense, multimask_output=True, image_index=image_index
        )
        for image in range(3):
            rows = (image_index == image).nonzero()[:, 0]
            args = (embeddings[image : image + 1], image_pe, sparse[rows], dense[rows])
            want_masks, want_iou = ref.mask_decoder(*args, multimask_output=True)
            torch.testing.assert_close(masks[rows], want_masks, atol=ATOL, rtol=0)
            torch.testing.assert_close(iou[rows], want_iou, atol=ATOL, rtol=0)
    assert masks.shape == (7, 3, 64, 64)


def test_image_index_gradients_reach_each_image(tiny_pair):
    ours, _ = tiny_pair
    embeddings, image_pe, sparse, dense = _decoder_inputs(ours, num_prompts=4, num_images=3)
    embeddings.requires_grad_(True)
    image_index = torch.tensor([0, 0, 2, 2])
    masks, _ = ours.mask_decoder(
        embeddings, image_pe, sparse, dense, multimask_output=False, image_index=image_index
    )
    masks.sum().backward()
    per_image = embeddings.grad.abs().sum(dim=(1, 2, 3))
    assert per_image[0] > 0 and per_image[2] > 0
    assert per_image[1] == 0  # no prompt on image 1
    ours.zero_grad()

"""The decoder's shared-image first block: same outputs and gradients as the official
per-image calls, and it really is taken (or not) when it should be."""

from __future__ import annotations

import copy

import pytest
import torch

from samft.model.mask_decoder import dense_is_shared
from samft.model.transformer import TwoWayAttentionBlock

ATOL = 1e-4


def _prompts(sam, num_prompts: int, num_images: int, with_masks: bool = False):
    pe = sam.prompt_encoder
    h, w = pe.image_embedding_size
    coords = torch.rand(num_prompts, 3, 2) * sam.image_size
    labels = torch.tensor([[1, 0, 1]]).expand(num_prompts, 3)
    masks = torch.randn(num_prompts, 1, 4 * h, 4 * w) if with_masks else None
    with torch.no_grad():
        sparse, dense = pe(points=(coords, labels), boxes=None, masks=masks)
    embeddings = torch.randn(num_images, pe.embed_dim, h, w)
    return embeddings, pe.get_dense_pe(), sparse, dense


def _count_shared_calls(decoder) -> list[int]:
    """Patch the first block to count how often the shared-image path runs."""
    calls = []
    block = decoder.transformer.layers[0]
    original = block.forward_shared_image

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    block.forward_shared_image = counting
    return calls


def test_dense_is_shared_recognises_expanded_equal_and_distinct_rows():
    base = torch.randn(1, 8, 4, 4)
    assert dense_is_shared(base.expand(5, -1, -1, -1))  # strides say so
    assert dense_is_shared(base.expand(5, -1, -1, -1).clone())  # values say so
    assert dense_is_shared(base)
    distinct = base.repeat(5, 1, 1, 1)
    distinct[3, 0, 0, 0] += 1e-3
    assert not dense_is_shared(distinct)


def test_first_block_shared_equals_per_prompt_forward():
    torch.manual_seed(0)
    block = TwoWayAttentionBlock(32, 4, 64, skip_first_layer_pe=True)
    image_keys = torch.randn(3, 20, 32)
    key_pe = torch.randn(1, 20, 32)
    queries = torch.randn(5, 6, 32)
    index = torch.tensor([2, 0, 0, 1, 2])
    got_q, got_k = block.forward_shared_image(queries, image_keys, queries, key_pe, index)
    want_q, want_k = block(queries, image_keys[index], queries, key_pe.expand(5, -1, -1))
    torch.testing.assert_close(got_q, want_q, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_k, want_k, atol=1e-5, rtol=0)


@pytest.mark.parametrize("tokens", [3, 6])  # 4 heads x 3 < 16 reorders; x 6 does not
@pytest.mark.parametrize("skip_first_layer_pe", [True, False])
def test_one_image_path_equals_per_prompt_forward(tokens, skip_first_layer_pe):
    """All prompts on one image stack their tokens instead of copying the image's: the
    same tokens, image tokens and gradients as the per-prompt forward."""
    torch.manual_seed(0)
    block = TwoWayAttentionBlock(32, 4, 64, skip_first_layer_pe=skip_first_layer_pe).double()
    image_keys = torch.randn(1, 20, 32, dtype=torch.float64)
    key_pe = torch.randn(1, 20, 32, dtype=torch.float64)
    queries = torch.randn(5, tokens, 32, dtype=torch.float64)
    index = torch.zeros(5, dtype=torch.long)
    assert block.cross_attn_image_to_token.reorders(tokens) == (tokens == 3)
    grads = []
    for run in ("shared", "per_prompt"):
        block.zero_grad()
        if run == "shared":
            out = block.forward_shared_image(queries, image_keys, queries, key_pe, index)
        else:
            out = block(queries, image_keys[index], queries, key_pe.expand(5, -1, -1))
        grads.append(out)
        (out[0].square().sum() + out[1].sin().sum()).backward()
        # a key bias that softmax cancels gets no gradient in one order, a zero one in the other
        grads.append(
            [torch.zeros_like(p) if p.grad is None else p.grad for p in block.parameters()]
        )
    (got_q, got_k), got_grads, (want_q, want_k), want_grads = grads
    torch.testing.assert_close(got_q, want_q)
    torch.testing.assert_close(got_k, want_k)
    assert any(g.abs().sum() > 0 for g in got_grads)
    for got, want in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_batched_gradients_equal_official_per_image_calls(tiny_pair):
    """Outputs and every parameter gradient of one batched call over 3 images equal the
    sum over official calls, one per image (the official repeats the embedding)."""
    ours, ref = tiny_pair
    ours, ref = copy.deepcopy(ours), copy.deepcopy(ref)
    multimask = True
    embeddings, image_pe, sparse, dense = _prompts(ours, num_prompts=6, num_images=3)
    image_index = torch.tensor([0, 2, 1, 0, 2, 2])
    calls = _count_shared_calls(ours.mask_decoder)
    masks, iou = ours.mask_decoder(
        embeddings, image_pe, sparse, dense, multimask, image_index=image_index
    )
    assert calls == [1]
    (masks.square().mean() + iou.sum()).backward()
    want_masks = torch.empty_like(masks)
    want_iou = torch.empty_like(iou)
    for image in range(3):
        rows = (image_index == image).nonzero()[:, 0]
        m, i = ref.mask_decoder(
            embeddings[image : image + 1], image_pe, sparse[rows], dense[rows], multimask
        )
        # the same loss as above, split over the images
        (m.square().sum() / masks.numel() + i.sum()).backward()
        want_masks[rows], want_iou[rows] = m.detach(), i.detach()
    torch.testing.assert_close(masks.detach(), want_masks, atol=ATOL, rtol=0)
    torch.testing.assert_close(iou.detach(), want_iou, atol=ATOL, rtol=0)
    ref_params = dict(ref.mask_decoder.named_parameters())
    checked = 0
    for name, param in ours.mask_decoder.named_parameters():
        want = ref_params[name].grad
        if want is None:
            assert param.grad is None or not param.grad.any(), name
            continue
        torch.testing.assert_close(param.grad, want, atol=1e-4, rtol=1e-3, msg=name)
        checked += 1
    assert checked > 20


def test_mask_prompts_take_the_per_prompt_path_and_match_official(tiny_pair):
    ours, ref = copy.deepcopy(tiny_pair[0]), tiny_pair[1]
    embeddings, image_pe, sparse, dense = _prompts(ours, 3, 1, with_masks=True)
    calls = _count_shared_calls(ours.mask_decoder)
    with torch.no_grad():
        masks, iou = ours.mask_decoder(embeddings, image_pe, sparse, dense, True)
        want_masks, want_iou = ref.mask_decoder(embeddings, image_pe, sparse, dense, True)
    assert calls == []
    torch.testing.assert_close(masks, want_masks, atol=ATOL, rtol=0)
    torch.testing.assert_close(iou, want_iou, atol=ATOL, rtol=0)

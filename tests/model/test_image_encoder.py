from __future__ import annotations

import pytest
import torch

from samft.model.image_encoder import (
    decomposed_rel_pos_bias,
    rel_pos_lookup,
    window_partition,
    window_unpartition,
)
from samft.model.registry import build_sam

ATOL = 1e-4


@pytest.mark.parametrize("pair_name", ["tiny_pair", "vit_b_pair"])
def test_encoder_matches_official(pair_name, request):
    ours, ref = request.getfixturevalue(pair_name)
    size = ours.image_size
    x = torch.randn(2 if pair_name == "tiny_pair" else 1, 3, size, size)
    with torch.no_grad():
        got = ours.image_encoder(x)
        want = ref.image_encoder(x)
    assert (
        got.shape
        == want.shape
        == (x.shape[0], ours.prompt_encoder.embed_dim, size // 16, size // 16)
    )
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_encoder_gradients_match_official(tiny_pair):
    ours, ref = tiny_pair
    x = torch.randn(1, 3, 256, 256)
    weights = torch.randn(1, 128, 16, 16)
    grads = []
    for model in (ours, ref):
        model.zero_grad()
        xi = x.clone().requires_grad_(True)
        (model.image_encoder(xi) * weights).sum().backward()
        named = dict(model.image_encoder.named_parameters())
        grads.append(({k: p.grad.clone() for k, p in named.items()}, xi.grad))
        model.zero_grad()
    (ours_grads, ours_x), (ref_grads, ref_x) = grads
    assert ours_grads.keys() == ref_grads.keys()
    torch.testing.assert_close(ours_x, ref_x, atol=ATOL, rtol=1e-4)
    for key in ours_grads:
        torch.testing.assert_close(ours_grads[key], ref_grads[key], atol=ATOL, rtol=1e-3, msg=key)
    # The rel-pos tables are reached only through the attention bias: they must learn.
    assert ours_grads["blocks.1.attn.rel_pos_h"].abs().sum() > 0


def test_activation_checkpointing_same_outputs_and_grads():
    torch.manual_seed(1)
    plain = build_sam("tiny").image_encoder.train()
    ckpt = build_sam("tiny", activation_checkpointing=True).image_encoder.train()
    ckpt.load_state_dict(plain.state_dict())
    calls = {"plain": 0, "ckpt": 0}
    # Count attention calls inside block 0 (hooks on the checkpointed block itself are
    # not re-run when it is recomputed; those of its children are).
    for name, enc in (("plain", plain), ("ckpt", ckpt)):
        enc.blocks[0].attn.register_forward_hook(
            lambda *_, name=name: calls.__setitem__(name, calls[name] + 1)
        )

    x = torch.randn(2, 3, 256, 256)
    outs = [enc(x) for enc in (plain, ckpt)]
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    for out in outs:
        out.square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)
    # The checkpointed block ran again in the backward pass; the plain one did not.
    assert calls == {"plain": 1, "ckpt": 2}

    # Off in eval mode and under no_grad: a single pass, no recomputation.
    calls["ckpt"] = 0
    with torch.no_grad():
        ckpt(x)
    ckpt.eval()(x).sum().backward()
    assert calls["ckpt"] == 2


def test_window_partition_pads_and_round_trips():
    x = torch.randn(2, 10, 7, 5)
    windows, padded = window_partition(x, 4)
    assert padded == (12, 8)
    assert windows.shape == (2 * 3 * 2, 4, 4, 5)
    torch.testing.assert_close(windows[0], x[0, :4, :4])
    torch.testing.assert_close(windows[1, :, :3], x[0, :4, 4:7])
    assert windows[1, :, 3].abs().sum() == 0  # zero padding on the right
    assert windows[5, 2:].abs().sum() == 0  # and at the bottom
    torch.testing.assert_close(window_unpartition(windows, 4, padded, (10, 7)), x)


def test_rel_pos_lookup_by_hand():
    table = torch.arange(5.0)[:, None]  # offsets -2..2 -> rows 0..4
    got = rel_pos_lookup(3, table)[..., 0]
    assert got.tolist() == [[2, 1, 0], [3, 2, 1], [4, 3, 2]]


@pytest.mark.parametrize("table_len", [2 * 6 - 1, 9, 17])
def test_rel_pos_bias_matches_official(official, table_len):
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

    B, heads, H, W, d = 2, 3, 6, 5, 8
    q = torch.randn(B, heads, H * W, d)
    rel_h = torch.randn(table_len, d)
    rel_w = torch.randn(2 * W - 1, d)
    ours = decomposed_rel_pos_bias(q, rel_h, rel_w, (H, W))
    zero = torch.zeros(B * heads, H * W, H * W)
    want = add_decomposed_rel_pos(
        zero, q.reshape(B * heads, H * W, d), rel_h, rel_w, (H, W), (H, W)
    )
    torch.testing.assert_close(ours.reshape(B * heads, H * W, H * W), want, atol=1e-5, rtol=1e-5)


def test_encoder_rejects_unpadded_input():
    encoder = build_sam("tiny").image_encoder
    with pytest.raises(ValueError, match=r"expects B x 3 x 256 x 256 input.*\(1, 3, 200, 256\)"):
        encoder(torch.zeros(1, 3, 200, 256))

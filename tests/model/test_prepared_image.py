"""Decoding on a prepared image (`MaskDecoder.prepare_image` / `predict_prepared`) and the
tiled pixel-wise upscaling (`MaskDecoder.upscale_masks`) equal the plain decoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import samft.model.mask_decoder as mask_decoder_module
from samft.model.lora import apply_lora
from samft.model.mask_decoder import MaskDecoder
from samft.model.prompt_encoder import PromptEncoder
from samft.model.transformer import TwoWayTransformer

GRID = (6, 5)  # a non-square token grid: rows and columns must not be swapped


pytestmark = pytest.mark.usefixtures("one_thread")


def _parts(dim: int = 64, heads: int = 4) -> tuple[PromptEncoder, MaskDecoder]:
    """A prompt encoder (float32: cast its outputs) and a float64 decoder with random
    (non-zero-bias) weights."""
    torch.manual_seed(0)
    prompt_encoder = PromptEncoder(
        embed_dim=dim,
        image_embedding_size=GRID,
        input_image_size=(4 * 16 * GRID[0], 4 * 16 * GRID[1]),
        mask_in_chans=16,
    )
    decoder = MaskDecoder(
        transformer_dim=dim,
        transformer=TwoWayTransformer(depth=2, embedding_dim=dim, num_heads=heads, mlp_dim=96),
    )
    with torch.no_grad():
        for param in decoder.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    return prompt_encoder, decoder.double()


def _prompts(prompt_encoder: PromptEncoder, num: int, num_points: int):
    coords = torch.rand(num, num_points, 2) * 64
    labels = torch.randint(0, 2, (num, num_points))
    labels[:, 0] = 1
    with torch.no_grad():
        sparse, dense = prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    return sparse.double(), dense.double()


def _dense_pe(prompt_encoder: PromptEncoder) -> torch.Tensor:
    with torch.no_grad():
        return prompt_encoder.get_dense_pe().double()


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize(
    ("dim", "heads", "num_points"),
    [(64, 4, 1), (64, 8, 2)],  # 4 heads x 7 tokens < 32 reorders; 8 x 8 does not
)
def test_predict_prepared_equals_forward(multimask, dim, heads, num_points):
    prompt_encoder, decoder = _parts(dim, heads)
    image = torch.randn(1, dim, *GRID, dtype=torch.float64)
    image_pe = _dense_pe(prompt_encoder)
    sparse, dense = _prompts(prompt_encoder, 5, num_points)
    tokens = 1 + decoder.num_mask_tokens + sparse.shape[1]
    reorders = decoder.transformer.layers[0].cross_attn_image_to_token.reorders(tokens)
    assert reorders == (num_points == 1)
    with torch.no_grad():
        want_masks, want_iou = decoder(image, image_pe, sparse, dense, multimask)
        prepared = decoder.prepare_image(image, image_pe, dense)
        masks, iou = decoder.predict_prepared(prepared, sparse, multimask)
    assert masks.shape == want_masks.shape == (5, 3 if multimask else 1, 4 * 6, 4 * 5)
    torch.testing.assert_close(masks, want_masks, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(iou, want_iou, rtol=1e-10, atol=1e-10)
    # the same prepared image serves any number of calls
    with torch.no_grad():
        again, _ = decoder.predict_prepared(prepared, sparse[:2], multimask)
    torch.testing.assert_close(again, want_masks[:2], rtol=1e-10, atol=1e-10)


def test_predict_prepared_with_lora_adapted_projections():
    """Adapted projections take the plain attention order; the cached projections are the
    adapted layers' outputs."""
    prompt_encoder, decoder = _parts()
    apply_lora(decoder.transformer, rank=2, alpha=2.0, target_modules=("q_proj", "v_proj"))
    with torch.no_grad():
        for name, param in decoder.named_parameters():
            if "lora" in name:
                param.normal_(0, 0.1)
    decoder = decoder.double()
    image = torch.randn(1, 64, *GRID, dtype=torch.float64)
    sparse, dense = _prompts(prompt_encoder, 3, 1)
    image_pe = _dense_pe(prompt_encoder)
    with torch.no_grad():
        want_masks, want_iou = decoder(image, image_pe, sparse, dense, True)
        prepared = decoder.prepare_image(image, image_pe, dense)
        masks, iou = decoder.predict_prepared(prepared, sparse, True)
    torch.testing.assert_close(masks, want_masks, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(iou, want_iou, rtol=1e-10, atol=1e-10)


def _plain_upscale(decoder: MaskDecoder, src, hyper_in, size):
    h, w = size
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(src.shape[0], -1, h, w))
    return (hyper_in @ upscaled.flatten(2)).reshape(*hyper_in.shape[:2], 4 * h, 4 * w)


@pytest.mark.parametrize("tile_rows", [1, 4, 100])  # 4 rows of 6 leave a shorter last tile
def test_tiled_upscaling_equals_the_layers_with_gradients(monkeypatch, tile_rows):
    _, decoder = _parts()
    monkeypatch.setattr(mask_decoder_module, "UPSCALE_TILE_PIXELS", tile_rows * GRID[1])
    src = torch.randn(3, GRID[0] * GRID[1], 64, dtype=torch.float64, requires_grad=True)
    hyper_in = torch.randn(3, 2, 8, dtype=torch.float64, requires_grad=True)
    results = []
    for upscale in (decoder.upscale_masks, lambda *a: _plain_upscale(decoder, *a)):
        decoder.zero_grad()
        src.grad = hyper_in.grad = None
        out = upscale(src, hyper_in, GRID)
        out.sin().sum().backward()
        grads = [src.grad, hyper_in.grad] + [p.grad for p in decoder.output_upscaling.parameters()]
        results.append((out.detach(), grads))
    (got, got_grads), (want, want_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-10)


class _WideConvTranspose(nn.ConvTranspose2d):
    """A subclass: not known to be a per-pixel map, so the upscaling runs as layers."""


def test_other_upscaling_layers_run_as_they_are():
    _, decoder = _parts()
    first = decoder.output_upscaling[0]
    replaced = _WideConvTranspose(64, 16, kernel_size=2, stride=2).double()
    replaced.load_state_dict(first.state_dict())
    decoder.output_upscaling[0] = replaced
    assert decoder._pixelwise_upscaling() is None
    src = torch.randn(2, GRID[0] * GRID[1], 64, dtype=torch.float64)
    hyper_in = torch.randn(2, 3, 8, dtype=torch.float64)
    with torch.no_grad():
        got = decoder.upscale_masks(src, hyper_in, GRID)
        want = _plain_upscale(decoder, src, hyper_in, GRID)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_prepare_image_takes_one_image():
    prompt_encoder, decoder = _parts()
    images = torch.randn(2, 64, *GRID, dtype=torch.float64)
    _, dense = _prompts(prompt_encoder, 1, 1)
    with pytest.raises(ValueError, match="one image"):
        decoder.prepare_image(images, _dense_pe(prompt_encoder), dense)

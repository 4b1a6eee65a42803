"""TinyViT (MobileSAM `vit_t`, LiteMedSAM `lite_medsam`) against the reference code.

The references only run at their native sizes (their TinyViT reshapes the output to a
fixed 64 x 64 grid), so parity runs at 1024 px (vit_t) and 256 px (lite_medsam).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from reference_tinyvit import (
    build_reference_lite_medsam,
    build_reference_vit_t,
    import_lite_medsam,
    import_mobile_sam,
    lite_medsam_checkpoint,
    lite_medsam_decode,
    lite_medsam_preprocess,
)
from torch import nn

from samft.infer.predictor import SamPredictor
from samft.model.lora import LoRALinear, apply_lora, merge_lora
from samft.model.registry import VARIANTS, build_sam
from samft.model.tiny_vit import TinyViT
from samft.model.tiny_vit_blocks import attention_bias_index

ATOL = 1e-4


def perturb_(model: nn.Module, seed: int, scale: float = 0.05) -> nn.Module:
    """Seeded noise on every float parameter and buffer (BN statistics included), so
    zero-initialised tensors (attention biases, the last BN of each MBConv) carry signal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=gen) * scale)
    return model


@pytest.fixture(scope="module")
def mobile_sam():
    return import_mobile_sam()


@pytest.fixture(scope="module")
def lite():
    return import_lite_medsam()


@pytest.fixture(scope="module")
def vit_t_pair(mobile_sam):
    ours = perturb_(build_sam("vit_t"), seed=0)
    return ours, build_reference_vit_t(mobile_sam, ours.state_dict())


@pytest.fixture(scope="module")
def lite_pair(lite):
    ours = perturb_(build_sam("lite_medsam"), seed=1)
    return ours, build_reference_lite_medsam(lite, ours.state_dict())


def _records(size: int, count: int = 2) -> list[dict]:
    """Images (input frame, [0, 255]) with points, boxes and a mask prompt."""
    g = torch.Generator().manual_seed(5)
    wide = {
        "image": torch.randint(0, 256, (3, size * 3 // 4, size), generator=g).float(),
        "original_size": (300, 400),
        "point_coords": torch.rand(2, 3, 2, generator=g) * size * 0.7,
        "point_labels": torch.tensor([[1, 0, 1], [1, 1, -1]]),
        "boxes": torch.tensor([[10.0, 20.0, size / 2, size / 2], [5.0, 5.0, 40.0, 60.0]]),
    }
    tall = {
        "image": torch.randint(0, 256, (3, size, size // 2), generator=g).float(),
        "original_size": (500, 250),
        "point_coords": torch.rand(1, 1, 2, generator=g) * size / 2,
        "point_labels": torch.tensor([[1]]),
        "mask_inputs": torch.randn(1, 1, 256, 256, generator=g),
    }
    return [tall, wide][:count]


def _compare_outputs(got: dict, want_low_res, want_iou, want_masks) -> None:
    torch.testing.assert_close(got["low_res_logits"], want_low_res, atol=ATOL, rtol=0)
    torch.testing.assert_close(got["iou_predictions"], want_iou, atol=ATOL, rtol=0)
    assert got["masks"].dtype == torch.bool and got["masks"].shape == want_masks.shape
    # thresholded masks may differ only where a logit is within tolerance of 0
    assert (got["masks"] != want_masks).float().mean() < 1e-3


# ------------------------------------------------------------------ layout
@pytest.mark.parametrize("variant", ["vit_t", "lite_medsam"])
def test_state_dict_matches_reference_both_ways(variant, mobile_sam, lite):
    ref = mobile_sam.build_sam_vit_t() if variant == "vit_t" else lite.build_lite_medsam()
    ours = build_sam(variant)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(perturb_(ours, 3).state_dict(), strict=True)
    has_head = "image_encoder.head.weight" in shapes
    assert has_head == (variant == "vit_t")
    # the unused classifier is stored, never trained
    assert not any(".head." in n or "norm_head" in n for n, _ in ours.named_parameters())


def test_attention_bias_index_matches_reference(mobile_sam):
    from mobile_sam.modeling.tiny_vit_sam import Attention

    for ws in (7, 14):
        ref = Attention(dim=32, key_dim=8, num_heads=4, attn_ratio=1, resolution=(ws, ws))
        assert torch.equal(attention_bias_index(ws), ref.attention_bias_idxs)


# ------------------------------------------------------------------ MobileSAM (vit_t)
def test_vit_t_encoder_matches_mobile_sam(vit_t_pair):
    ours, ref = vit_t_pair
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got, want = ours.image_encoder(x), ref.image_encoder(x)
    assert got.shape == (1, 256, 64, 64)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("multimask", [True, False])
def test_vit_t_sam_forward_matches_mobile_sam(vit_t_pair, multimask):
    ours, ref = vit_t_pair
    batch = _records(1024, count=2 if multimask else 1)
    for got, want in zip(ours(batch, multimask), ref(batch, multimask), strict=True):
        _compare_outputs(got, want["low_res_logits"], want["iou_predictions"], want["masks"])


# ------------------------------------------------------------------ LiteMedSAM
def test_min_max_preprocess_matches_lite_medsam():
    sam = build_sam("lite_medsam")
    assert sam.normalization == "min_max" and build_sam("vit_t").normalization == "mean_std"
    image = np.random.default_rng(0).integers(20, 200, (200, 256, 3)).astype(np.uint8)
    got = sam.preprocess(torch.from_numpy(image).permute(2, 0, 1)[None].float())
    want = lite_medsam_preprocess(image)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert got[..., :200, :].amin() == 0 and got.amax() == 1 and got[..., 200:, :].abs().sum() == 0
    flat = np.full((100, 120, 3), 77, np.uint8)  # max == min: the 1e-8 floor gives zeros
    got = sam.preprocess(torch.from_numpy(flat).permute(2, 0, 1)[None].float())
    torch.testing.assert_close(got, lite_medsam_preprocess(flat), atol=0, rtol=0)


def test_lite_medsam_encoder_matches_reference(lite_pair):
    ours, ref = lite_pair
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got, want = ours.image_encoder(x), ref.image_encoder(x)
    assert got.shape == (1, 256, 64, 64)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("multimask", [True, False])
def test_lite_medsam_pipeline_matches_reference(lite_pair, multimask):
    """`Sam.forward` against LiteMedSAM's inference steps (min-max, pad, encode, decode,
    crop, resize) on the same resized images and prompts."""
    ours, ref = lite_pair
    batch = _records(256, count=2 if multimask else 1)
    for got, record in zip(ours(batch, multimask), batch, strict=True):
        image = record["image"].permute(1, 2, 0).numpy()
        with torch.no_grad():
            embedding = ref.image_encoder(lite_medsam_preprocess(image))
        ref_record = dict(record, input_size=tuple(record["image"].shape[-2:]))
        low_res, iou, logits = lite_medsam_decode(ref, embedding, ref_record, multimask)
        _compare_outputs(got, low_res, iou, logits > 0)
        ours_logits = ours.postprocess_masks(
            got["low_res_logits"], ref_record["input_size"], record["original_size"]
        )
        torch.testing.assert_close(ours_logits, logits, atol=ATOL, rtol=0)


def test_real_lite_medsam_weights_match_reference(lite, ct_organs):
    state_dict = torch.load(lite_medsam_checkpoint(), map_location="cpu", weights_only=True)
    ours = build_sam("lite_medsam")
    ours.load_state_dict(state_dict, strict=True)
    ref = build_reference_lite_medsam(lite, state_dict)

    stem = "s0114_111"  # 258 x 181: resized to 256 x 180, then padded
    original = cv2.cvtColor(
        cv2.imread(str(ct_organs / "images" / f"{stem}.png")), cv2.COLOR_BGR2RGB
    )
    H, W = original.shape[:2]
    h, w = round(H * 256 / max(H, W)), round(W * 256 / max(H, W))
    image = cv2.resize(original, (w, h), interpolation=cv2.INTER_AREA)  # as LiteMedSAM
    with torch.no_grad():
        got = ours.image_encoder(
            ours.preprocess(torch.from_numpy(image).permute(2, 0, 1)[None].float())
        )
        want = ref.image_encoder(lite_medsam_preprocess(image))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)

    organs = ["heart_ventricle_left", "lung_lower_lobe_right"]
    truth = np.stack(
        [cv2.imread(str(ct_organs / "masks" / f"{stem}_{o}_000.png"), 0) > 0 for o in organs]
    )
    boxes = []
    for mask in truth:
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
    boxes = torch.tensor(boxes, dtype=torch.float32) * 256 / max(H, W)
    record = {"boxes": boxes.floor(), "input_size": (h, w), "original_size": (H, W)}
    with torch.no_grad():
        sparse, dense = ours.prompt_encoder(points=None, boxes=record["boxes"], masks=None)
        low_res, iou = ours.mask_decoder(
            got, ours.prompt_encoder.get_dense_pe(), sparse, dense, False
        )
        logits = ours.postprocess_masks(low_res, (h, w), (H, W))
    ref_low_res, ref_iou, ref_logits = lite_medsam_decode(ref, want, record, False)
    torch.testing.assert_close(low_res, ref_low_res, atol=ATOL, rtol=0)
    torch.testing.assert_close(iou, ref_iou, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)
    # and the released weights do segment the organs the boxes were drawn around
    pred = (logits[:, 0] > 0).numpy()
    dice = 2 * (pred & truth).sum((1, 2)) / (pred.sum((1, 2)) + truth.sum((1, 2)))
    assert (dice > 0.8).all(), dice

    # the predictor, from the original image and original-frame boxes, does the same: the
    # variant's own resize (OpenCV area), min-max scaling, padding and postprocessing
    predictor = SamPredictor(ours)
    predictor.set_image(original)
    assert predictor.transform.interpolation == "area"
    torch.testing.assert_close(predictor.features, want, atol=ATOL, rtol=0)
    # boxes in the original frame that land exactly on the reference's input-frame boxes
    # (samft scales x and y separately, as SAM does; LiteMedSAM's script scales both by
    # 256 / max(H, W) and floors: the two differ by under a pixel)
    scale = np.array([w / W, h / H, w / W, h / H])
    for k in range(len(organs)):
        box = record["boxes"][k].numpy().astype(np.float64) / scale
        masks, scores, _ = predictor.predict(box=box, multimask_output=False, return_logits=True)
        np.testing.assert_allclose(masks[0], ref_logits[k, 0].numpy(), atol=1e-3)
        np.testing.assert_allclose(scores[0], ref_iou[k, 0].item(), atol=1e-4)


# ------------------------------------------------------------------ training behaviour
def _small_encoder(**kwargs) -> TinyViT:
    """A narrow, shallow TinyViT with LiteMedSAM's 1x1 stem: 64 px in, 16 x 16 out, cheap.
    Windows of 7 on 32 x 32 and 16 x 16 maps need padding, as in the real models."""
    torch.manual_seed(0)
    encoder = TinyViT(
        img_size=64,
        embed_dims=(16, 32, 48, 64),
        depths=(2, 1, 2, 1),
        num_heads=(1, 2, 3, 4),
        window_sizes=(7, 7, 7, 7),
        stem="conv1x1",
        out_chans=32,
        **kwargs,
    )
    return perturb_(encoder, 7)


def _batchnorms(module: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def test_batchnorm_frozen_by_default_in_train_mode():
    enc = _small_encoder()
    x = torch.randn(2, 3, 64, 64)
    expected = enc.eval()(x)
    stats = {k: v.clone() for k, v in enc.state_dict().items() if "running" in k}
    enc.train()
    assert enc.training and enc.layers[1].blocks[0].attn.training
    assert len(_batchnorms(enc)) == 2 + 2 * 3 + 3 * 3 + 4  # stem, MBConv, merges, local
    assert not any(bn.training for bn in _batchnorms(enc))
    out = enc(x)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)  # train == eval output
    out.square().mean().backward()
    assert enc.patch_embed.seq[0].bn.weight.grad.abs().sum() > 0  # affine params still learn
    for key, value in stats.items():
        assert torch.equal(enc.state_dict()[key], value), key


def test_batchnorm_trains_only_when_asked_and_trainable():
    enc = _small_encoder(freeze_batchnorm=False).train()
    assert all(bn.training for bn in _batchnorms(enc))
    before = enc.layers[0].blocks[0].conv1.bn.running_mean.clone()
    enc(torch.randn(2, 3, 64, 64))
    assert not torch.equal(enc.layers[0].blocks[0].conv1.bn.running_mean, before)
    # a frozen encoder keeps its statistics even under train() ...
    enc.requires_grad_(False).train()
    assert not any(bn.training for bn in _batchnorms(enc))
    # ... and so does a LoRA-adapted one (only the adapters train)
    enc = _small_encoder(freeze_batchnorm=False)
    apply_lora(enc, rank=2, alpha=4, target_modules=["qkv"])
    for name, p in enc.named_parameters():
        p.requires_grad_(".lora_" in f".{name.rsplit('.', 1)[-1]}")
    enc.train()
    assert not any(bn.training for bn in _batchnorms(enc))
    assert enc.layers[2].blocks[0].attn.qkv.training


def test_lora_on_tiny_vit_attention():
    enc = _small_encoder().eval()
    x = torch.randn(1, 3, 64, 64)
    before = enc(x)
    keys = set(enc.state_dict())
    replaced = apply_lora(enc, rank=4, alpha=8, target_modules=["qkv"])
    blocks = [(1, 0), (2, 0), (2, 1), (3, 0)]
    assert replaced == [f"layers.{i}.blocks.{j}.attn.qkv" for i, j in blocks]
    torch.testing.assert_close(enc(x), before, atol=0, rtol=0)  # B = 0: exact identity
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(std=0.05)
    adapted = enc(x)
    assert (adapted - before).abs().max() > 1e-3
    assert merge_lora(enc) == 4
    assert set(enc.state_dict()) == keys
    torch.testing.assert_close(enc(x), adapted, atol=1e-5, rtol=1e-5)


def test_activation_checkpointing_same_outputs_and_grads():
    plain = _small_encoder().train()
    ckpt = _small_encoder(activation_checkpointing=True).train()
    calls = {"plain": 0, "ckpt": 0}
    for name, enc in (("plain", plain), ("ckpt", ckpt)):  # a child of a checkpointed block
        enc.layers[2].blocks[1].attn.register_forward_hook(
            lambda *_, name=name: calls.__setitem__(name, calls[name] + 1)
        )
    x = torch.randn(2, 3, 64, 64)
    outs = [enc(x) for enc in (plain, ckpt)]
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    for out in outs:
        out.square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)
    assert calls == {"plain": 1, "ckpt": 2}  # recomputed in the backward pass


# ------------------------------------------------------------------ registry
def test_tiny_vit_variants_and_sizes():
    lite, vit_t = VARIANTS["lite_medsam"], VARIANTS["vit_t"]
    assert (lite.encoder, vit_t.encoder, VARIANTS["vit_b"].encoder) == ("tiny_vit",) * 2 + ("vit",)
    assert (lite.embedding_stride, vit_t.embedding_stride) == (4, 16)
    assert (lite.stem, lite.with_head, vit_t.with_head) == ("conv1x1", False, True)
    sam = build_sam("lite_medsam")
    assert sam.image_size == sam.image_encoder.img_size == 256
    assert not any(bn.training for bn in _batchnorms(sam.train()))  # Sam.train reaches it
    assert sam.image_encoder.neck.training
    sam.eval()
    assert sam.prompt_encoder.image_embedding_size == (64, 64)
    assert sam.prompt_encoder.mask_input_size == (256, 256)
    small = build_sam("vit_t", image_size=256, activation_checkpointing=True)
    assert small.image_encoder.activation_checkpointing and not small.training
    assert small.image_encoder(torch.zeros(1, 3, 256, 256)).shape == (1, 256, 16, 16)
    with pytest.raises(ValueError, match="multiple of the patch size 16, got 500"):
        build_sam("vit_t", image_size=500)
    with pytest.raises(ValueError, match=r"expects B x 3 x 256 x 256 input.*\(1, 3, 200, 256\)"):
        sam.image_encoder(torch.zeros(1, 3, 200, 256))

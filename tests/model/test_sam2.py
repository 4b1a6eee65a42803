"""samft's SAM 2 image model on its own: training paths, frames and errors (the parity with
Meta's `sam2` is in test_sam2_parity.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from samft.model.registry import VARIANTS, build_sam, build_sam2_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _decode_loss(model, images):
    """A loss on every output of two decoder calls on two images: clicks of both kinds and
    boxes, multimask without a mask prompt, single mask with one."""
    features = model.encode(model.preprocess(images))
    g = torch.Generator().manual_seed(0)
    coords = torch.rand(2, 1, 2, generator=g) * model.image_size
    prompts = {
        "point_coords": coords,
        "point_labels": torch.tensor([[1], [0]]),
        "boxes": torch.tensor([[10.0, 20.0, 120.0, 90.0], [30.0, 30.0, 60.0, 200.0]]),
        "image_index": torch.tensor([1, 0]),
    }
    loss = 0
    for mask_inputs in (None, torch.randn(2, 1, 64, 64, generator=g)):
        low_res, iou, object_score = model.decode(
            features, mask_inputs=mask_inputs, multimask_output=mask_inputs is None, **prompts
        )
        loss = loss + low_res.square().mean() + iou.sum() + object_score.sum()
    return loss


def test_every_parameter_trains_and_activation_checkpointing_changes_nothing():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 200, 300) * 255
    plain = build_sam("sam2_tiny").train()
    recomputed = build_sam("sam2_tiny", activation_checkpointing=True).train()
    recomputed.load_state_dict(plain.state_dict())
    _decode_loss(plain, images).backward()
    _decode_loss(recomputed, images).backward()
    for (name, p), q in zip(plain.named_parameters(), recomputed.parameters(), strict=True):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4)


def test_stochastic_depth_acts_in_training_only():
    model = build_sam2_model(replace(VARIANTS["sam2_tiny"], drop_path_rate=0.5), 256)
    x = torch.randn(4, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(model.image_encoder(x)[2], model.image_encoder(x)[2])  # eval
        model.train()
        torch.manual_seed(1)
        first = model.image_encoder(x)[2]
        assert not torch.equal(first, model.image_encoder(x)[2])


def test_frames_shapes_and_prompt_free_decoding():
    model = build_sam("sam2_tiny")
    image = torch.randint(0, 256, (1, 3, 120, 200), dtype=torch.uint8)
    x = model.preprocess(image)
    assert x.shape == (1, 3, 256, 256)
    torch.testing.assert_close(x, model.preprocess(image.float()))
    # x scales by S / W, y by S / H: the original image's far corner is the square's
    corner = model.transform_coords(torch.tensor([[200.0, 120.0]]), (120, 200))
    torch.testing.assert_close(corner, torch.tensor([[256.0, 256.0]]))
    with torch.no_grad():
        features = model.encode(x)
        low_res, iou, object_score = model.decode(features, multimask_output=False)
    assert (low_res.shape, iou.shape, object_score.shape) == ((1, 1, 64, 64), (1, 1), (1, 1))
    assert iou.min() >= 0 and iou.max() <= 1  # the IoU head ends in a sigmoid
    assert model.postprocess_masks(low_res, (120, 200)).shape == (1, 1, 120, 200)
    assert model.prompt_encoder is model.sam_prompt_encoder
    assert model.mask_decoder is model.sam_mask_decoder


def test_errors_name_the_problem():
    model = build_sam("sam2_tiny")
    with pytest.raises(ValueError, match=r"expects B x 3 x 256 x 256 input"):
        model.encode(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ValueError, match="point_labels must come with point_coords"):
        model.decode(model.encode(torch.zeros(1, 3, 256, 256)), torch.zeros(1, 1, 2))
    with pytest.raises(ValueError, match="must be a positive multiple of 32, got 240"):
        build_sam("sam2.1_hiera_t", image_size=240)


@pytest.mark.parametrize("multimask", [True, False])
def test_decoding_on_a_prepared_image_equals_decode(multimask):
    """`prepare_decoder` + `decode_prepared` (the automatic mask generator's calls) answer
    clicks as `decode` does, the single mask's stability fallback included."""
    torch.manual_seed(0)
    sam = build_sam("sam2_tiny").eval()
    with torch.no_grad():
        for tensor in sam.state_dict().values():  # signal in the zero-initialised parts
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.05)
        features = sam.encode(sam.preprocess(torch.rand(1, 3, 256, 256) * 255))
        coords = torch.rand(5, 1, 2) * 256
        labels = torch.ones(5, 1, dtype=torch.int)
        want = sam.decode(features, coords, labels, multimask_output=multimask)[:2]
        got = sam.decode_prepared(sam.prepare_decoder(features), coords, labels, multimask)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape == (5, 3 if multimask else 1, *g.shape[2:])
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)

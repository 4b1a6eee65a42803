"""transformers' `SamModel` layout both ways: HF folders load in samft with the same outputs,
samft exports load strictly in `SamModel` / `SamProcessor` with the same outputs and pixels,
the key map round-trips, and bad folders fail naming the path."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import safetensors.torch
import torch

from samft.model.registry import build_sam, get_hyper_params
from samft.model.transforms import ResizeLongestSide, input_shape
from samft.weights import CheckpointError, load_sam, read_state_dict, save_sam
from samft.weights.export import export_checkpoint
from samft.weights.transformers_layout import (
    is_transformers_checkpoint,
    official_to_transformers,
    read_transformers_checkpoint,
    transformers_config,
    transformers_to_official,
    write_transformers_checkpoint,
)
from samft.weights.transformers_map import HF_PE, HF_PE_TIED

transformers = pytest.importorskip("transformers")
from transformers import SamConfig, SamModel, SamProcessor  # noqa: E402

TOL = 1e-4
# samft's `tiny` in transformers' terms, with transformers' defaults elsewhere (its mask
# decoder LayerNorm eps 1e-6, as on the Hub, where samft's decoder uses 1e-5)
TINY_HF = {
    "vision_config": {
        "hidden_size": 96,
        "num_hidden_layers": 4,
        "num_attention_heads": 3,
        "global_attn_indexes": [1, 3],
        "window_size": 8,
        "image_size": 256,
        "patch_size": 16,
        "output_channels": 128,
        "num_pos_feats": 64,
    },
    "prompt_encoder_config": {"hidden_size": 128, "image_size": 256, "patch_size": 16},
    "mask_decoder_config": {"hidden_size": 128, "mlp_dim": 512, "iou_head_hidden_dim": 128},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _perturb(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere (zero position tables, unit LayerNorms would hide bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return module.eval()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A `SamModel` (samft's tiny architecture, random weights) saved by `save_pretrained`."""
    model = _perturb(SamModel(SamConfig(**TINY_HF)), seed=1)
    folder = tmp_path_factory.mktemp("hf") / "sam-tiny"
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def samft_export(tmp_path_factory):
    """samft's tiny (random weights) as a .pth and its `format=transformers` export."""
    root = tmp_path_factory.mktemp("export")
    sam = _perturb(build_sam("tiny"), seed=2)
    checkpoint = save_sam(sam, root / "tiny.pth")
    written = export_checkpoint(checkpoint, root / "out" / "tiny", format="transformers")
    return sam, written


# prompts in the input frame (256 px): N x P x 2 points with N x P labels, N x 4 boxes
POINTS = torch.tensor([[[40.0, 60.0], [200.0, 31.5]], [[128.0, 128.0], [10.0, 250.0]]])
LABELS = torch.tensor([[1, 0], [1, 1]])
BOXES = torch.tensor([[20.0, 30.0, 180.0, 200.0], [5.5, 100.0, 250.0, 140.0]])
PROMPTS = {
    "points": (POINTS, LABELS, None),
    "one_point": (POINTS[:, :1], LABELS[:, :1], None),
    "box": (None, None, BOXES),
    "points_and_box": (POINTS, LABELS, BOXES),
}


def _samft_outputs(sam, embedding, points, labels, boxes, multimask):
    sparse, dense = sam.prompt_encoder(
        points=None if points is None else (points, labels), boxes=boxes, masks=None
    )
    return sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


def _hf_outputs(model, embedding, points, labels, boxes, multimask):
    """`SamModel` on input-frame prompts (one image, N prompts)."""
    out = model(
        image_embeddings=embedding,
        input_points=None if points is None else points[None],
        input_labels=None if labels is None else labels[None],
        input_boxes=None if boxes is None else boxes[None],
        multimask_output=multimask,
    )
    return out.pred_masks[0], out.iou_scores[0]


@torch.no_grad()
def _max_differences(sam, model, seed):
    """Max |samft - SamModel| of the image embedding, and of the low-res masks and IoU
    scores of every prompt kind, multimask on and off (same pixels, same prompts)."""
    pixels = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(seed))
    embedding = sam.image_encoder(pixels)  # each network's own, once: the encoder is slow
    hf_embedding = model.get_image_embeddings(pixels)
    worst = {"embedding": (embedding - hf_embedding).abs().max().item()}
    for name, prompt in PROMPTS.items():
        for multimask in (True, False):
            masks, iou = _samft_outputs(sam, embedding, *prompt, multimask)
            hf_masks, hf_iou = _hf_outputs(model, hf_embedding, *prompt, multimask)
            assert masks.shape == hf_masks.shape == (2, 3 if multimask else 1, 64, 64)
            assert iou.shape == hf_iou.shape
            worst[f"{name}/masks/multimask={multimask}"] = (masks - hf_masks).abs().max().item()
            worst[f"{name}/iou/multimask={multimask}"] = (iou - hf_iou).abs().max().item()
    return worst


# ---------------------------------------------------------------------------- (a) HF -> samft
def test_samft_loads_a_save_pretrained_folder_with_the_same_outputs(hf_folder):
    folder, model = hf_folder
    assert is_transformers_checkpoint(folder)
    assert is_transformers_checkpoint(folder / "model.safetensors")
    sam = load_sam(folder)
    assert sam.image_size == 256 and not sam.training
    worst = _max_differences(sam, model, seed=3)
    print("HF folder -> samft, max |diff|:", worst)
    assert max(worst.values()) < TOL, worst


def test_the_weights_file_and_a_pytorch_model_bin_read_the_same(hf_folder, tmp_path):
    folder, model = hf_folder
    from_folder = read_state_dict(folder)
    from_file = read_state_dict(folder / "model.safetensors")
    assert from_file.keys() == from_folder.keys() == build_sam("tiny").state_dict().keys()
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # both tied keys
    from_bin = read_state_dict(tmp_path)
    for key, value in from_folder.items():
        torch.testing.assert_close(from_bin[key], value, atol=0, rtol=0, msg=key)
        torch.testing.assert_close(from_file[key], value, atol=0, rtol=0, msg=key)


def test_export_of_a_hf_folder_to_the_official_layout(hf_folder, tmp_path):
    folder, _ = hf_folder
    written = export_checkpoint(folder, tmp_path / "official", format="safetensors")
    sidecar = json.loads(written["sidecar"].read_text())
    assert sidecar["source"]["path"] == str((folder / "model.safetensors").resolve())
    exported = safetensors.torch.load_file(written["safetensors"])
    for key, value in read_state_dict(folder).items():
        torch.testing.assert_close(exported[key], value, atol=0, rtol=0, msg=key)


# ---------------------------------------------------------------------------- (b) samft -> HF
def test_export_loads_strictly_in_sam_model_with_the_same_outputs(samft_export):
    sam, written = samft_export
    folder = written["transformers_weights"].parent
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    model, info = SamModel.from_pretrained(folder, output_loading_info=True)
    assert info == {
        "missing_keys": set(),
        "unexpected_keys": set(),
        "mismatched_keys": set(),
        "error_msgs": [],
    }
    worst = _max_differences(sam, model.eval(), seed=4)
    print("samft -> HF export, max |diff|:", worst)
    assert max(worst.values()) < TOL, worst

    back = load_sam(folder)  # and samft reads its own export back exactly
    for key, value in sam.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], value, atol=0, rtol=0, msg=key)


def test_export_config_and_sidecar(samft_export):
    _, written = samft_export
    folder = written["transformers_config"].parent
    config = SamConfig.from_pretrained(folder)
    vision = config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (96, 4, 3)
    assert list(vision.global_attn_indexes) == [1, 3] and vision.window_size == 8
    assert (vision.image_size, vision.patch_size, vision.output_channels) == (256, 16, 128)
    assert config.prompt_encoder_config.hidden_size == 128
    decoder = config.mask_decoder_config
    assert (decoder.hidden_size, decoder.mlp_dim, decoder.iou_head_hidden_dim) == (128, 512, 128)

    sidecar = json.loads(written["sidecar"].read_text())
    assert sidecar["variant"] == "tiny" and sidecar["image_size"] == 256
    assert sidecar["files"]["transformers_weights"]["path"] == "tiny/model.safetensors"
    assert written["sidecar"].parent == folder.parent


def test_export_replaces_an_earlier_export_but_not_a_foreign_folder(samft_export, tmp_path):
    sam, written = samft_export
    state_dict = sam.state_dict()
    target = tmp_path / "hf"
    write_transformers_checkpoint(state_dict, target)
    write_transformers_checkpoint(state_dict, target)  # over an earlier export: fine
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temp folder left
    (target / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="notes.txt"):
        write_transformers_checkpoint(state_dict, target)
    assert (target / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------- (c) processor
def test_sam_processor_of_the_export_gives_samft_pixels_and_points(samft_export):
    sam, written = samft_export
    processor = SamProcessor.from_pretrained(written["transformers_preprocessor"].parent)
    image = np.random.default_rng(0).integers(0, 256, (300, 170, 3), dtype=np.uint8)
    point = [[[100.0, 250.0]]]
    hf = processor(images=image, input_points=[point], return_tensors="pt")

    resize = ResizeLongestSide(256)
    resized = torch.from_numpy(resize.apply_image(image)).permute(2, 0, 1).float()
    ours = sam.preprocess(resized[None])
    assert tuple(hf["reshaped_input_sizes"][0].tolist()) == input_shape(300, 170, 256)
    assert hf["pixel_values"].shape == ours.shape == (1, 3, 256, 256)
    difference = (hf["pixel_values"] - ours).abs().max().item()
    print("SamProcessor vs samft pixels, max |diff|:", difference)
    assert difference < 1e-5  # the same PIL bilinear resize; float rounding only
    coords = resize.apply_coords(np.array(point[0]), (300, 170))
    np.testing.assert_allclose(hf["input_points"][0, 0].numpy(), coords, atol=1e-4)


# ---------------------------------------------------------------------------- (d) key map
@pytest.mark.parametrize("variant, size", [("tiny", 256), ("vit_b", 1024), ("vit_b", 512)])
def test_key_map_matches_sam_model_and_round_trips(variant, size):
    with torch.device("meta"):  # shapes only
        official = build_sam(variant, image_size=size).state_dict()
        config = SamConfig(**transformers_config(get_hyper_params(variant), size))
        hf = SamModel(config).state_dict()
    mapped = official_to_transformers(official)
    assert mapped.keys() == hf.keys()
    assert all(mapped[k].shape == hf[k].shape for k in hf)
    back = transformers_to_official(mapped)
    assert list(back) == list(official) and all(back[k] is official[k] for k in official)
    del hf[HF_PE_TIED]  # a tie: save_pretrained writes one (meta tensors cannot be compared)
    assert transformers_to_official(hf).keys() == official.keys()


def test_hf_state_dict_round_trips(hf_folder):
    _, model = hf_folder
    hf = model.state_dict()
    back = official_to_transformers(transformers_to_official(hf))
    assert back.keys() == hf.keys()
    for key, value in hf.items():
        torch.testing.assert_close(back[key], value, atol=0, rtol=0, msg=key)


# ---------------------------------------------------------------------------- (e) bad inputs
def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"{re.escape(str(tmp_path))}.*has no config.json"):
        load_sam(tmp_path)


def test_config_of_another_model_type(hf_folder, tmp_path):
    folder, _ = hf_folder
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=f"{re.escape(str(tmp_path / 'config.json'))}.*'vit'"):
        read_state_dict(tmp_path)


def test_missing_weights_file(hf_folder, tmp_path):
    folder, _ = hf_folder
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(CheckpointError, match=f"{re.escape(str(tmp_path))} has no weights file"):
        read_transformers_checkpoint(tmp_path)


def test_keys_of_another_model_and_untied_embeddings(hf_folder, tmp_path):
    folder, model = hf_folder
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    weights = tmp_path / "model.safetensors"
    hf = {k: v.clone() for k, v in model.state_dict().items()}
    safetensors.torch.save_file({**hf, "lm_head.weight": torch.zeros(2)}, weights)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(weights))}.*lm_head.weight"):
        read_state_dict(tmp_path)
    hf[HF_PE_TIED] = hf[HF_PE] + 1
    safetensors.torch.save_file(hf, weights)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(weights))}.*differs"):
        read_state_dict(tmp_path)


def test_config_that_the_shapes_contradict(hf_folder, tmp_path):
    folder, _ = hf_folder
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["global_attn_indexes"] = [0, 3]
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="global_attn_indexes=\\[0, 3\\].*'tiny'"):
        load_sam(tmp_path)

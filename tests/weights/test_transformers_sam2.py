"""transformers' `Sam2Model` layout both ways: a `save_pretrained` folder (or its weights
file alone) loads in samft with the same features, masks, IoU and object scores; samft's
`format=transformers` export loads strictly in `Sam2Model` with the same outputs; the key
map fits `Sam2Model` for every size; bad folders fail naming the path and the key."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import safetensors.torch
import torch
from reference_sam2 import perturb_

from samft.model.registry import build_sam, get_hyper_params
from samft.model.sam2 import Sam2
from samft.weights import CheckpointError, load_sam, read_state_dict, save_sam
from samft.weights.export import export_checkpoint
from samft.weights.transformers_layout import is_transformers_checkpoint
from samft.weights.transformers_sam2_map import (
    HF_PE,
    HF_PE_TIED,
    HF_POINT,
    sam2_preprocessor_config,
    sam2_to_transformers,
    sam2_transformers_config,
    transformers_to_sam2,
)

transformers = pytest.importorskip("transformers")
from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4  # fp32 logits, IoU and object scores
S = 256  # sam2_tiny's input side; prompts below are in its input frame (the S x S square)


def _tie(model: Sam2Model) -> Sam2Model:
    """One Fourier matrix for the grid and the points, as every converted checkpoint has
    (a fresh `Sam2Model` draws the two buffers apart)."""
    with torch.no_grad():
        model.prompt_encoder.shared_embedding.positional_embedding.copy_(
            model.shared_image_embedding.positional_embedding
        )
    return model


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A `Sam2Model` with samft's sam2_tiny architecture, random weights, saved by
    `save_pretrained`."""
    config = Sam2Config(**sam2_transformers_config(get_hyper_params("sam2_tiny")))
    torch.manual_seed(0)
    model = _tie(perturb_(Sam2Model(config), seed=1)).eval()
    folder = tmp_path_factory.mktemp("hf") / "sam2-tiny"
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def samft_export(tmp_path_factory):
    """samft's sam2_tiny (random weights) as a .pth and its `format=transformers` export."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    sam = perturb_(build_sam("sam2_tiny"), seed=2).eval()
    checkpoint = save_sam(sam, root / "sam2_tiny.pth")
    written = export_checkpoint(checkpoint, root / "out" / "sam2_tiny", format="transformers")
    return sam, written


# N = 2 prompts, input frame: N x P x 2 points with N x P labels, N x 4 boxes
POINTS = torch.tensor([[[40.0, 60.0], [200.0, 31.5]], [[128.0, 128.0], [10.0, 250.0]]])
LABELS = torch.tensor([[1, 0], [1, 1]])
BOXES = torch.tensor([[20.0, 30.0, 180.0, 200.0], [5.5, 100.0, 250.0, 140.0]])
PROMPTS = {  # (points, labels, boxes, mask input)
    "points": (POINTS, LABELS, None, False),
    "one_point": (POINTS[:, :1], LABELS[:, :1], None, False),
    "box": (None, None, BOXES, False),
    "box_and_points": (POINTS, LABELS, BOXES, False),
    "point_and_mask": (POINTS[:, :1], LABELS[:, :1], None, True),
}


def _hf_outputs(model, embeddings, points, labels, boxes, mask, multimask):
    """`Sam2Model.forward` on input-frame prompts: one image, N prompts (its boxes are
    its own `input_boxes`, which it puts after the points: the decoder does not care)."""
    out = model(
        image_embeddings=embeddings,
        input_points=None if points is None else points[None],
        input_labels=None if labels is None else labels[None],
        input_boxes=None if boxes is None else boxes[None],
        input_masks=mask,
        multimask_output=multimask,
    )
    return out.pred_masks[0], out.iou_scores[0], out.object_score_logits[0]


@torch.no_grad()
def _max_differences(sam: Sam2, model: Sam2Model, seed: int) -> dict[str, float]:
    """Max |samft - Sam2Model| of the three feature levels and, for every prompt kind with
    multimask on and off, of the low-res logits, IoU and object-score logits."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(1, 3, S, S, generator=gen)
    features = sam.encode(pixels)
    hf_levels = model.get_image_embeddings(pixels)  # [S/4 (conv_s0), S/8 (conv_s1), S/16]
    ours = (*features.high_res, features.image_embed)
    pairs = enumerate(zip(ours, hf_levels, strict=True))
    worst = {f"level{k}": (a - b).abs().max().item() for k, (a, b) in pairs}
    mask = 3 * torch.randn(1, 1, S // 4, S // 4, generator=gen)
    for name, (points, labels, boxes, with_mask) in PROMPTS.items():
        for multimask in (True, False):
            n = 2
            masks, iou, score = sam.decode(
                features, points, labels, boxes, mask.expand(n, -1, -1, -1) if with_mask else None,
                multimask,
            )  # fmt: skip
            hf_masks, hf_iou, hf_score = _hf_outputs(
                model, hf_levels, points, labels, boxes, mask if with_mask else None, multimask
            )
            assert masks.shape == hf_masks.shape == (n, 3 if multimask else 1, S // 4, S // 4)
            key = f"{name}/multimask={multimask}"
            worst[f"{key}/masks"] = (masks - hf_masks).abs().max().item()
            worst[f"{key}/iou"] = (iou - hf_iou).abs().max().item()
            worst[f"{key}/object_score"] = (score - hf_score).abs().max().item()
    return worst


# ---------------------------------------------------------------------------- HF -> samft
def test_samft_loads_a_save_pretrained_folder_with_the_same_outputs(hf_folder):
    folder, model = hf_folder
    assert is_transformers_checkpoint(folder)
    assert is_transformers_checkpoint(folder / "model.safetensors")
    sam = load_sam(folder)
    assert isinstance(sam, Sam2) and sam.image_size == S and not sam.training
    worst = _max_differences(sam, model, seed=3)
    print("Sam2Model folder -> samft, max |diff|:", max(worst.values()))
    assert max(worst.values()) < TOL, worst


def test_the_weights_file_alone_is_recognised_from_its_keys(hf_folder, tmp_path):
    folder, _ = hf_folder
    alone = tmp_path / "weights.safetensors"  # no config.json beside it
    shutil.copy(folder / "model.safetensors", alone)
    assert not is_transformers_checkpoint(alone)
    from_folder = read_state_dict(folder)
    from_file = read_state_dict(alone)
    assert from_file.keys() == from_folder.keys() == build_sam("sam2_tiny").state_dict().keys()
    for key, value in from_folder.items():
        torch.testing.assert_close(from_file[key], value, atol=0, rtol=0, msg=key)
    assert isinstance(load_sam(alone), Sam2)


# ---------------------------------------------------------------------------- samft -> HF
def test_export_loads_strictly_in_sam2_model_with_the_same_outputs(samft_export):
    sam, written = samft_export
    folder = written["transformers_weights"].parent
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    model, info = Sam2Model.from_pretrained(folder, output_loading_info=True)
    assert info == {
        "missing_keys": set(),
        "unexpected_keys": set(),
        "mismatched_keys": set(),
        "error_msgs": [],
    }
    worst = _max_differences(sam, model.eval(), seed=4)
    print("samft -> Sam2Model export, max |diff|:", max(worst.values()))
    assert max(worst.values()) < TOL, worst

    back = load_sam(folder)  # and samft reads its own export back exactly
    for key, value in sam.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], value, atol=0, rtol=0, msg=key)


def test_export_config_preprocessor_and_sidecar(samft_export):
    _, written = samft_export
    folder = written["transformers_config"].parent
    config = Sam2Config.from_pretrained(folder)
    backbone = config.vision_config.backbone_config
    assert list(backbone.blocks_per_stage) == [1, 1, 2, 1]
    assert list(backbone.embed_dim_per_stage) == [16, 32, 64, 128]
    assert list(backbone.global_attention_blocks) == [3]
    assert config.vision_config.backbone_feature_sizes == [[64, 64], [32, 32], [16, 16]]
    assert config.prompt_encoder_config.image_size == S

    preprocessor = json.loads(written["transformers_preprocessor"].read_text())
    assert preprocessor["size"] == {"height": S, "width": S}
    sidecar = json.loads(written["sidecar"].read_text())
    assert sidecar["variant"] == "sam2_tiny" and sidecar["image_size"] == S
    assert sidecar["files"]["transformers_weights"]["path"] == "sam2_tiny/model.safetensors"
    assert sidecar["load_with"].startswith("transformers.Sam2Model.from_pretrained")
    assert sidecar["video_parts"] == {"tensors": 0, "in_this_export": False}


def test_preprocessor_config_is_sam2_image_processors_own_at_1024():
    """At Meta's 1024 px the written config repeats transformers' own defaults (so
    `Sam2Processor` preprocesses as samft's `Sam2.preprocess`, up to its resize filter).
    transformers' SAM 2 image processor needs torchvision, which samft never installs."""
    pytest.importorskip("torchvision")
    config = sam2_preprocessor_config(1024)
    assert config["size"] == Sam2ImageProcessor.size
    assert config["mask_size"] == Sam2ImageProcessor.mask_size
    assert config["image_mean"] == pytest.approx(list(Sam2ImageProcessor.image_mean))
    assert config["image_std"] == pytest.approx(list(Sam2ImageProcessor.image_std))
    assert config["resample"] == int(Sam2ImageProcessor.resample)


# ---------------------------------------------------------------------------- key map
@pytest.mark.parametrize(
    "variant", ["sam2_tiny", "sam2.1_hiera_t", "sam2.1_hiera_b+", "sam2_hiera_l"]
)
def test_key_map_matches_sam2_model_and_round_trips(variant):
    with torch.device("meta"):  # shapes only
        official = build_sam(variant).state_dict()
        config = Sam2Config(**sam2_transformers_config(get_hyper_params(variant)))
        hf = Sam2Model(config).state_dict()
    mapped = sam2_to_transformers(official)
    assert mapped.keys() == hf.keys()
    assert all(mapped[k].shape == hf[k].shape for k in hf)
    back = transformers_to_sam2(mapped)
    assert back.keys() == official.keys()
    assert all(back[k].shape == official[k].shape for k in official)


def test_transformers_default_config_is_samfts_hiera_t():
    """transformers' own `Sam2Config()` (SAM 2.1 hiera tiny) has the tensors samft's
    `sam2.1_hiera_t` maps to, and the config samft writes for it agrees field by field."""
    with torch.device("meta"):
        hf = Sam2Model(Sam2Config()).state_dict()
        official = build_sam("sam2.1_hiera_t").state_dict()
    mapped = sam2_to_transformers(official)
    assert mapped.keys() == hf.keys() and all(mapped[k].shape == hf[k].shape for k in hf)
    ours = Sam2Config(**sam2_transformers_config(get_hyper_params("sam2.1_hiera_t")))
    theirs = Sam2Config()
    for part in ("prompt_encoder_config", "mask_decoder_config"):
        assert getattr(ours, part).to_dict() == getattr(theirs, part).to_dict(), part
    ours_bb, theirs_bb = ours.vision_config.backbone_config, theirs.vision_config.backbone_config
    assert ours_bb.to_dict() == theirs_bb.to_dict()
    for field in ("backbone_channel_list", "backbone_feature_sizes", "fpn_top_down_levels"):
        assert getattr(ours.vision_config, field) == getattr(theirs.vision_config, field), field


def test_video_parts_stay_out_of_sam2_model_and_points_are_stacked():
    with torch.device("meta"):
        official = build_sam("sam2_tiny").state_dict()
    official["memory_attention.layers.0.norm1.weight"] = torch.zeros(4)
    mapped = sam2_to_transformers(official)
    assert not any(k.startswith("memory") for k in mapped)
    points = torch.arange(4 * 64.0).reshape(4, 64)
    real = {**{k: torch.zeros(1) for k in mapped}, HF_POINT: points}
    back = transformers_to_sam2(real)
    for k in range(4):
        assert torch.equal(
            back[f"sam_prompt_encoder.point_embeddings.{k}.weight"], points[k : k + 1]
        )


# ---------------------------------------------------------------------------- bad inputs
def _copy_folder(folder, tmp_path, config=None, tensors=None):
    config = config or json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config))
    if tensors is None:
        shutil.copy(folder / "model.safetensors", tmp_path / "model.safetensors")
    else:
        safetensors.torch.save_file(tensors, tmp_path / "model.safetensors")
    return tmp_path


def test_a_config_that_the_shapes_contradict(hf_folder, tmp_path):
    folder, _ = hf_folder
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["backbone_config"]["global_attention_blocks"] = [2]
    _copy_folder(folder, tmp_path, config=config)
    with pytest.raises(CheckpointError, match=r"global_attention_blocks=\[2\].*'sam2_tiny'.*\[3\]"):
        load_sam(tmp_path)


def test_a_video_model_folder_is_named(hf_folder, tmp_path):
    folder, _ = hf_folder
    config = {**json.loads((folder / "config.json").read_text()), "model_type": "sam2_video"}
    _copy_folder(folder, tmp_path, config=config)
    with pytest.raises(CheckpointError, match=r"config\.json describes model_type='sam2_video'"):
        load_sam(tmp_path)


def test_untied_fourier_matrices_and_a_bad_point_table(hf_folder, tmp_path):
    folder, model = hf_folder
    hf = {k: v.clone() for k, v in model.state_dict().items()}
    weights = tmp_path / "model.safetensors"
    _copy_folder(folder, tmp_path, tensors={**hf, HF_PE_TIED: hf[HF_PE] + 1})
    with pytest.raises(CheckpointError, match=f"{re.escape(str(weights))}.*differs"):
        read_state_dict(tmp_path)
    _copy_folder(folder, tmp_path, tensors={**hf, HF_POINT: hf[HF_POINT][:3]})
    with pytest.raises(CheckpointError, match=r"point_embed\.weight' has shape \(3, 64\)"):
        read_state_dict(tmp_path)
    _copy_folder(folder, tmp_path, tensors={**hf, "lm_head.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"not in transformers' Sam2Model layout: lm_head"):
        read_state_dict(tmp_path)


# ---------------------------------------------------------------------------- real config
@pytest.mark.slow
def test_transformers_own_hiera_t_folder_loads_with_the_same_outputs(tmp_path):
    """transformers' own `Sam2Config()` (SAM 2.1 hiera tiny at 1024 px, built by
    transformers, not from samft's config) with random weights: samft reads the folder as
    `sam2.1_hiera_t`, and its export goes back into `Sam2Model` strictly, same outputs."""
    torch.manual_seed(0)
    model = _tie(perturb_(Sam2Model(Sam2Config()), seed=8)).eval()
    model.save_pretrained(tmp_path / "hf")
    sam = load_sam(tmp_path / "hf")
    assert sam.image_size == 1024 and len(sam.image_encoder.trunk.blocks) == 12
    pixels = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(9))
    points = POINTS * 4  # the prompts above, in the 1024 px frame
    boxes = BOXES * 4
    with torch.no_grad():
        features = sam.encode(pixels)
        levels = model.get_image_embeddings(pixels)
        worst = {
            f"level{k}": (a - b).abs().max().item()
            for k, (a, b) in enumerate(
                zip((*features.high_res, features.image_embed), levels, strict=True)
            )
        }
        for multimask in (True, False):
            for name, prompt in {
                "points": (points, LABELS, None),
                "box": (None, None, boxes),
            }.items():
                ours = sam.decode(features, *prompt, None, multimask)
                theirs = _hf_outputs(model, levels, *prompt, None, multimask)
                for what, a, b in zip(("masks", "iou", "object_score"), ours, theirs, strict=True):
                    worst[f"{name}/{what}/multimask={multimask}"] = (a - b).abs().max().item()
    print("transformers' hiera_t folder -> samft, max |diff|:", max(worst.values()))
    assert max(worst.values()) < TOL, worst

    written = export_checkpoint(tmp_path / "hf", tmp_path / "out" / "t", format="transformers")
    _, info = Sam2Model.from_pretrained(
        written["transformers_weights"].parent, output_loading_info=True
    )
    assert not any(info.values()), info
    exported = safetensors.torch.load_file(written["transformers_weights"])
    for key, value in model.state_dict().items():
        torch.testing.assert_close(exported[key], value, atol=0, rtol=0, msg=key)

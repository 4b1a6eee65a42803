"""SAM 2 weights in and out: Meta's files are recognised from their keys (variant from the
shapes, 2.0 or 2.1 from the video parts), loaded strictly with the video parts carried,
exported in Meta's layout that Meta's own loader (`build_sam2`'s `_load_checkpoint`) and
video predictor read strictly, and fetched by name like every known checkpoint."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from reference_sam2 import build_tiny_meta, import_sam2, perturb_
from test_known import _Handler  # the loopback file server of tests/weights/test_known.py
from torch import nn

from samft.infer.predictor import SamPredictor
from samft.model.registry import VARIANTS, Sam2HyperParams, build_sam
from samft.model.sam2 import Sam2
from samft.model.sam2.carried import is_video_part
from samft.model.sam2.image_encoder import feature_sizes
from samft.weights import (
    CheckpointError,
    load_sam,
    read_sam_state_dict,
    read_state_dict,
    save_sam,
)
from samft.weights.export import export_checkpoint
from samft.weights.known import KNOWN_WEIGHTS, known_entry, resolve_checkpoint
from samft.weights.sam2_layout import META_CONFIGS, video_keys
from samft.weights.shapes import infer_image_size, infer_variant

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-4
VIDEO_PREDICTOR = "sam2.sam2_video_predictor.SAM2VideoPredictor"


@pytest.fixture(scope="module")
def meta():
    return import_sam2()


@pytest.fixture(scope="module")
def meta_model(meta) -> nn.Module:
    torch.manual_seed(0)
    return perturb_(build_tiny_meta(), seed=5)


@pytest.fixture(scope="module")
def meta_file(meta_model, tmp_path_factory) -> Path:
    """Meta's tiny model saved as Meta ships checkpoints: `{"model": state_dict}`."""
    path = tmp_path_factory.mktemp("meta") / "sam2_tiny.pt"
    torch.save({"model": meta_model.state_dict()}, path)
    return path


# --- the variant from the keys -----------------------------------------------------------


def _shapes_of(variant: str, video: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with `variant`'s image-model shapes (meta device) plus `video`."""
    with torch.device("meta"):
        state = build_sam(variant).state_dict()
    return {**state, **video}


VIDEO_2_0 = {
    "memory_attention.norm.weight": torch.zeros(1),
    "memory_encoder.out_proj.weight": torch.zeros(1),
    "maskmem_tpos_enc": torch.zeros(1),
    "no_mem_pos_enc": torch.zeros(1),
    "obj_ptr_proj.layers.0.weight": torch.zeros(1),
}
VIDEO_2_1 = {**VIDEO_2_0, "no_obj_embed_spatial": torch.zeros(1)}


@pytest.mark.parametrize("size", ["t", "s", "b+", "l"])
def test_each_released_variant_is_read_from_its_shapes(size):
    for version, video in (("sam2", VIDEO_2_0), ("sam2.1", VIDEO_2_1)):
        state = _shapes_of(f"{version}_hiera_{size}", video)
        assert infer_variant(state) == f"{version}_hiera_{size}"
        assert infer_image_size(state) == 1024
    # no video parts (an image model never loaded from Meta's file): taken as 2.1
    assert infer_variant(_shapes_of(f"sam2_hiera_{size}", {})) == f"sam2.1_hiera_{size}"


def test_meta_file_reads_in_meta_keys(meta_model, meta_file):
    state = read_state_dict(meta_file)
    assert list(state) == list(meta_model.state_dict())  # nothing renamed, dropped or added
    assert infer_variant(state) == "sam2_tiny" and infer_image_size(state) == 256


def test_a_lightning_style_wrapping_keeps_every_sam2_key(meta_model, tmp_path):
    """`model.`-prefixed keys of a LightningModule holding a Sam2, beside other state."""
    state = {f"model.{k}": v for k, v in meta_model.state_dict().items()}
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": state, "pytorch-lightning_version": "2.5", "epoch": 1}, path)
    assert read_state_dict(path).keys() == meta_model.state_dict().keys()


# --- strict loading and its errors ----------------------------------------------------------


def test_partial_video_parts_are_refused_naming_the_file(meta_model, tmp_path):
    state = {k: v for k, v in meta_model.state_dict().items() if not k.startswith("memory_enc")}
    path = tmp_path / "cut.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=rf"{path}.*not memory_encoder"):
        load_sam(path)
    with pytest.raises(CheckpointError, match=rf"{path}.*not memory_encoder"):
        export_checkpoint(path, tmp_path / "out")
    assert not (tmp_path / "out.pth").exists()


def test_a_missing_image_tensor_is_refused_naming_file_and_key(meta_model, tmp_path):
    state = dict(meta_model.state_dict())
    del state["sam_mask_decoder.conv_s0.weight"]
    path = tmp_path / "broken.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=rf"{path}.*missing keys.*conv_s0.weight"):
        load_sam(path)


def test_the_other_release_of_the_same_image_model(tmp_path):
    """A 2.1 file asked for as 2.0 is refused with the reason; an image-only file loads as
    either (2.0 and 2.1 differ only in the video parts)."""
    # zeros expanded from one element: hiera_t's shapes in a file of a few kB
    zero = torch.zeros(1)
    state = {k: zero.expand(v.shape) for k, v in _shapes_of("sam2.1_hiera_t", {}).items()}
    image_only = tmp_path / "image_only.pt"
    torch.save({"model": state}, image_only)
    assert read_sam_state_dict(image_only, variant="sam2_hiera_t")[1] == "sam2_hiera_t"
    with_video = tmp_path / "sam2.1.pt"
    torch.save({"model": {**state, **VIDEO_2_1}}, with_video)
    with pytest.raises(CheckpointError, match=r"SAM 2.1 model .*'sam2_hiera_t' was requested"):
        load_sam(with_video, variant="sam2_hiera_t")
    with pytest.raises(CheckpointError, match=r"holds a 'sam2.1_hiera_t' SAM but variant 'vit_b'"):
        load_sam(with_video, variant="vit_b")


# --- export: Meta's layout, Meta's loader ---------------------------------------------------


@pytest.fixture(scope="module")
def tuned(meta_file) -> Sam2:
    """The model of `meta_file` with its image weights moved, as a fine-tune would."""
    model = load_sam(meta_file)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(("sam_mask_decoder.", "image_encoder.neck.")):
                param.add_(torch.randn_like(param) * 0.01)
    return model


@pytest.fixture(scope="module")
def exported(tuned, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("export")
    source = save_sam(tuned, folder / "tuned.pth")
    return export_checkpoint(source, folder / "out" / "my_sam2", format="official")


def test_export_is_meta_layout_with_the_video_parts_bit_identical(meta_model, tuned, exported):
    container = torch.load(exported["pth"], map_location="cpu", weights_only=True)
    assert list(container) == ["model"]
    state = container["model"]
    assert state.keys() == meta_model.state_dict().keys()
    for key, tensor in meta_model.state_dict().items():
        if is_video_part(key):
            assert torch.equal(state[key], tensor) and state[key].dtype == tensor.dtype, key
    for key, tensor in tuned.state_dict().items():
        assert torch.equal(state[key], tensor), key
    flat = safetensors.torch.load_file(str(exported["safetensors"]))
    assert flat.keys() == state.keys() and all(torch.equal(flat[k], v) for k, v in state.items())
    assert load_sam(exported["safetensors"]).state_dict().keys() == state.keys()


def test_sidecar_records_sam2_preprocessing(exported):
    sidecar = json.loads(exported["sidecar"].read_text())
    assert sidecar["variant"] == "sam2_tiny" and sidecar["image_size"] == 256
    assert sidecar["normalization"] == "imagenet"
    assert sidecar["resize_interpolation"] == "bilinear_antialias"
    assert sidecar["preprocessing"]["pixel_mean"] == [0.485, 0.456, 0.406]
    assert "+-32" in sidecar["preprocessing"]["masks"]
    assert sidecar["video_parts"]["tensors"] > 0
    assert sidecar["load_with"].startswith("samft.weights.load_sam")  # no Meta config
    for name in ("pth", "safetensors"):
        entry = sidecar["files"][name]
        digest = hashlib.sha256(exported[name].read_bytes()).hexdigest()
        assert entry["sha256"] == digest


@pytest.mark.parametrize("target", ["sam2.modeling.sam2_base.SAM2Base", VIDEO_PREDICTOR])
def test_meta_loads_the_export_strictly_and_answers_alike(
    meta, meta_model, tuned, exported, target, shared_data
):
    """Meta's `build_sam2` / `build_sam2_video_predictor` loader (strict, weights_only) on
    the export; the image predictor on it equals samft's on the tuned model."""
    theirs = build_tiny_meta(target)
    meta.build_sam._load_checkpoint(theirs, str(exported["pth"]))  # raises on any key mismatch
    for key, tensor in meta_model.state_dict().items():
        if is_video_part(key):
            assert torch.equal(theirs.state_dict()[key], tensor), key

    path = shared_data / "dsb-nuclei" / "val" / "images" / "4d4f254f3b8b4408.png"
    image = np.asarray(Image.open(path).convert("RGB"))
    predictor = meta.sam2_image_predictor.SAM2ImagePredictor(theirs, disable_torch_jit=True)
    predictor._bb_feat_sizes = feature_sizes(256)
    predictor.set_image(image)
    ours = SamPredictor(tuned)
    ours.set_image(image)
    prompts = {"point_coords": np.array([[150.0, 120.0]]), "point_labels": np.array([1])}
    for kwargs in (prompts, {"box": np.array([120.0, 90.0, 190.0, 150.0])}):
        got = ours.predict(**kwargs, return_logits=True)
        want = predictor.predict(**kwargs, return_logits=True)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, atol=ATOL, rtol=0)


def test_a_transformers_export_of_meta_s_file_leaves_the_video_parts_out(meta_file, tmp_path):
    """Sam2Model is the image model: the export loads in it strictly, the sidecar counts
    the video tensors it could not take, and samft reads back Meta's image model exactly."""
    transformers = pytest.importorskip("transformers")
    written = export_checkpoint(meta_file, tmp_path / "hf", format="transformers")
    folder = written["transformers_weights"].parent
    _, info = transformers.Sam2Model.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info
    sidecar = json.loads(written["sidecar"].read_text())
    video = video_keys(read_state_dict(meta_file))
    assert video and sidecar["video_parts"] == {"tensors": len(video), "in_this_export": False}
    back = read_state_dict(folder)
    meta_image = {k: v for k, v in read_state_dict(meta_file).items() if k not in video}
    assert back.keys() == meta_image.keys()
    for key, value in meta_image.items():
        torch.testing.assert_close(back[key], value, atol=0, rtol=0, msg=key)


# --- known weights by name ------------------------------------------------------------------


def test_the_sam2_1_entries():
    for size, variant in (("tiny", "t"), ("small", "s"), ("base_plus", "b+"), ("large", "l")):
        entry = KNOWN_WEIGHTS[f"sam2.1_hiera_{size}"]
        assert entry.variant == f"sam2.1_hiera_{variant}" and entry.variant in VARIANTS
        assert isinstance(VARIANTS[entry.variant], Sam2HyperParams)
        assert entry.url == (
            f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_{size}.pt"
        )
        assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0 and entry.size > 10**8
        assert known_entry(f"sam2.1_hiera_{variant}") is entry  # the variant name as alias
    assert set(META_CONFIGS) >= {e.variant for e in KNOWN_WEIGHTS.values() if "sam2" in e.name}


def test_a_sam2_name_is_fetched_verified_and_loaded(meta_model, meta_file, tmp_path, monkeypatch):
    """`sam2.1_hiera_tiny` resolved through a loopback file server standing in for Meta's
    URL (the entry's checksum and size set to the served file's)."""
    served = tmp_path / "served"
    served.mkdir()
    data = meta_file.read_bytes()
    (served / "sam2.1_hiera_tiny.pt").write_bytes(data)
    handler = functools.partial(_Handler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/sam2.1_hiera_tiny.pt"
        entry = dataclasses.replace(
            KNOWN_WEIGHTS["sam2.1_hiera_tiny"],
            variant="sam2_tiny",
            url=url,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
        )
        monkeypatch.setitem(KNOWN_WEIGHTS, entry.name, entry)
        cache = tmp_path / "cache"
        model = load_sam("sam2.1_hiera_t", cache_dir=cache)  # the alias, fetched once
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert isinstance(model, Sam2)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in meta_model.state_dict().items())
    cached = resolve_checkpoint("sam2.1_hiera_tiny", cache)  # offline now: the cached file
    assert cached == cache / "weights" / "sam2.1_hiera_tiny.pt" and cached.read_bytes() == data


# --- the real sam2.1_hiera_t config (slow) --------------------------------------------------


@pytest.mark.slow
def test_hiera_t_meta_file_predicts_and_exports_as_meta(meta, shared_data, tmp_path):
    """Meta's `sam2.1_hiera_t` (real config, random weights) saved as Meta ships it: samft
    reads the variant from the file, predicts as `SAM2ImagePredictor`, and its export
    loads strictly in `build_sam2` and `build_sam2_video_predictor`."""
    from reference_sam2 import sam2_hydra

    config = META_CONFIGS["sam2.1_hiera_t"]
    with sam2_hydra():
        ref = meta.build_sam.build_sam2(config, device="cpu")
    perturb_(ref, seed=1, scale=0.02)
    source = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": ref.state_dict()}, source)
    assert read_sam_state_dict(source)[1] == "sam2.1_hiera_t"

    path = shared_data / "dsb-nuclei" / "val" / "images" / "4d4f254f3b8b4408.png"
    image = np.asarray(Image.open(path).convert("RGB"))
    ours = SamPredictor(load_sam(source))
    theirs = meta.sam2_image_predictor.SAM2ImagePredictor(ref, disable_torch_jit=True)
    ours.set_image(image)
    theirs.set_image(image)
    point = {"point_coords": np.array([[150.0, 120.0], [171.0, 97.0]]), "point_labels": [1, 0]}
    box = {"box": np.array([120.0, 90.0, 190.0, 150.0])}
    for kwargs, multimask in ((point, True), (box, False), ({**box, **point}, False)):
        got = ours.predict(**kwargs, multimask_output=multimask, return_logits=True)
        want = theirs.predict(**kwargs, multimask_output=multimask, return_logits=True)
        for g, w in zip(got, want, strict=True):
            print(f"hiera_t max abs diff {np.abs(g - w).max():.2e}")
            np.testing.assert_allclose(g, w, atol=ATOL, rtol=0)

    written = export_checkpoint(source, tmp_path / "export" / "hiera_t")
    sidecar = json.loads(written["sidecar"].read_text())
    assert sidecar["load_with"].startswith(f'sam2.build_sam.build_sam2("{config}"')
    with sam2_hydra():
        for build in (meta.build_sam.build_sam2, meta.build_sam.build_sam2_video_predictor):
            loaded = build(config, ckpt_path=str(written["pth"]), device="cpu")  # strict
            state = loaded.state_dict()
            assert all(torch.equal(state[k], v) for k, v in ref.state_dict().items())

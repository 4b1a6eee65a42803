from __future__ import annotations

import os
import pickle

import lightning as L
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from reference import build_official
from torch.utils.data import DataLoader, TensorDataset

from samft.model.lora import apply_lora
from samft.model.registry import build_sam
from samft.weights import CheckpointError, load_sam, read_state_dict, save_sam
from samft.weights.shapes import infer_image_size, infer_variant, resize_position_embeddings


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    sam = build_sam("tiny")
    with torch.no_grad():  # non-zero position tables, so resizing has something to move
        sam.image_encoder.pos_embed.normal_(0, 0.1)
        for block in sam.image_encoder.blocks:
            block.attn.rel_pos_h.normal_(0, 0.1)
            block.attn.rel_pos_w.normal_(0, 0.1)
    return sam


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)


def _meta_state_dict(variant: str) -> dict[str, torch.Tensor]:
    """Right shapes, (almost) no memory: each tensor is one zero expanded to its shape."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_sam(variant).state_dict().items()}
    return {k: torch.zeros(1).expand(shape) for k, shape in shapes.items()}


# ------------------------------------------------------------------ formats
@pytest.mark.parametrize("name", ["sam.pth", "sam.pt", "sam.safetensors"])
def test_save_and_load_round_trip(tiny, tmp_path, name):
    path = save_sam(tiny, tmp_path / name)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temp file left behind
    loaded = load_sam(path)
    _assert_same_weights(loaded.state_dict(), tiny.state_dict())
    assert loaded.image_size == 256 and not loaded.training


def test_saved_pth_is_a_bare_official_state_dict(tiny, tmp_path):
    path = save_sam({f"model.{k}": v for k, v in tiny.state_dict().items()}, tmp_path / "a.pth")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == set(tiny.state_dict())  # no wrapper, no prefixes


def test_official_tiny_checkpoint_loads_in_samft(official, tmp_path):
    torch.manual_seed(5)
    ref = build_official(official.modeling, "tiny")
    torch.save(ref.state_dict(), tmp_path / "official.pth")
    ours = load_sam(tmp_path / "official.pth")
    _assert_same_weights(ours.state_dict(), ref.state_dict())
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(ours.image_encoder(x), ref.image_encoder(x), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_vit_b_official_layout_both_ways(official, tmp_path):
    """Meta's vit_b checkpoint layout loads strictly in samft, and samft's in Meta's builder."""
    torch.manual_seed(0)
    ref = official.sam_model_registry["vit_b"]()
    torch.save(ref.state_dict(), tmp_path / "meta_vit_b.pth")
    ours = load_sam(tmp_path / "meta_vit_b.pth", variant="vit_b")
    assert ours.image_size == 1024
    _assert_same_weights(ours.state_dict(), ref.state_dict())
    del ref

    save_sam(ours, tmp_path / "samft_vit_b.pth")
    back = official.sam_model_registry["vit_b"](checkpoint=str(tmp_path / "samft_vit_b.pth"))
    _assert_same_weights(back.state_dict(), ours.state_dict())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"model": sd},
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": {f"module.model.{k}": v for k, v in sd.items()}},
        lambda sd: {"model": {f"model.{k}": v for k, v in sd.items()}},
    ],
    ids=["model", "state_dict", "module.", "module.model.", "model.-in-model"],
)
def test_wrappers_and_prefixes_are_unwrapped(tiny, tmp_path, wrap):
    torch.save(wrap(tiny.state_dict()), tmp_path / "wrapped.pth")
    _assert_same_weights(read_state_dict(tmp_path / "wrapped.pth"), tiny.state_dict())


class _TinyFineTuner(L.LightningModule):
    """Like samft's LightningModule: the Sam lives in `self.model`, plus non-model state."""

    def __init__(self, lora: bool) -> None:
        super().__init__()
        self.save_hyperparameters({"model": {"variant": "tiny"}, "lora": lora})
        torch.manual_seed(0)
        self.model = build_sam("tiny").train()  # built in eval mode; Lightning keeps modes
        if lora:
            apply_lora(self.model.image_encoder, rank=4, alpha=8.0)
        self.register_buffer("class_weights", torch.ones(3))  # not part of the Sam

    def training_step(self, batch, batch_idx):
        return self.model.image_encoder(batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=5.0)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_lightning_checkpoint_of_samft(tmp_path, lora):
    module = _TinyFineTuner(lora)
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    data = DataLoader(TensorDataset(torch.randn(2, 3, 256, 256)), batch_size=2)
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    state_dict = read_state_dict(tmp_path / "last.ckpt")
    assert "class_weights" not in state_dict and all(
        k.startswith("image_") or k.startswith(("prompt_", "mask_")) for k in state_dict
    )
    assert not any("lora" in k for k in state_dict)
    loaded = load_sam(tmp_path / "last.ckpt")
    x = torch.randn(1, 3, 256, 256)
    module.model.eval()
    with torch.no_grad():
        want = module.model.image_encoder(x)
        torch.testing.assert_close(loaded.image_encoder(x), want, atol=1e-4, rtol=0)
    if lora:  # the adapter did train, so merging it changed the base weights
        torch.manual_seed(0)
        base = build_sam("tiny")
        assert not torch.equal(
            state_dict["image_encoder.blocks.0.attn.qkv.weight"],
            base.state_dict()["image_encoder.blocks.0.attn.qkv.weight"],
        )


# ------------------------------------------------------------------ architecture
@pytest.mark.parametrize("variant", ["tiny", "vit_b", "vit_l", "vit_h"])
def test_infer_variant_and_image_size(variant):
    state_dict = _meta_state_dict(variant)
    assert infer_variant(state_dict) == variant
    assert infer_image_size(state_dict) == (256 if variant == "tiny" else 1024)


def test_vit_l_file_for_vit_b_config_is_refused(tmp_path):
    path = tmp_path / "sam_vit_l.pth"
    torch.save(_meta_state_dict("vit_l"), path)
    assert path.stat().st_size < 1_000_000  # expanded zeros keep the file small
    with pytest.raises(CheckpointError) as err:
        load_sam(path, variant="vit_b")
    message = str(err.value)
    assert str(path) in message
    assert "holds a 'vit_l' SAM but variant 'vit_b' was requested" in message
    assert "unexpected keys (168): image_encoder.blocks.12.attn.proj.bias" in message
    assert (
        "shape mismatches" in message
        and "image_encoder.blocks.0.attn.proj.bias (file (1024,), model (768,))" in message
    )


def test_unknown_architecture_is_refused(tmp_path):
    state_dict = _meta_state_dict("tiny")
    state_dict["mask_decoder.iou_token.weight"] = torch.zeros(1, 64)
    torch.save(state_dict, tmp_path / "odd.pth")
    with pytest.raises(
        CheckpointError, match=r"odd\.pth.*matches no known SAM variant.*'prompt_embed_dim': 64"
    ):
        load_sam(tmp_path / "odd.pth")
    with pytest.raises(
        CheckpointError,
        match=r"odd\.pth does not fit the model: shape mismatches \(1\): "
        r"mask_decoder\.iou_token\.weight \(file \(1, 64\), model \(1, 128\)\)",
    ):
        load_sam(tmp_path / "odd.pth", variant="tiny")


def test_missing_keys_are_listed(tiny, tmp_path):
    state_dict = dict(tiny.state_dict())
    del state_dict["mask_decoder.iou_token.weight"]
    state_dict["mask_decoder.extra"] = torch.zeros(1)
    torch.save(state_dict, tmp_path / "partial.pth")
    with pytest.raises(
        CheckpointError,
        match=r"partial\.pth does not fit the model: missing keys \(1\): "
        r"mask_decoder\.iou_token\.weight; unexpected keys \(1\): mask_decoder\.extra",
    ):
        load_sam(tmp_path / "partial.pth", variant="tiny")


# ------------------------------------------------------------------ bad files
def test_truncated_files_are_refused(tiny, tmp_path):
    for name in ("cut.pth", "cut.safetensors"):
        full = save_sam(tiny, tmp_path / f"full_{name}")
        data = full.read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match=rf"{name}.*truncated or corrupt"):
            read_state_dict(tmp_path / name)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth: the file is truncated or corrupt"):
        read_state_dict(tmp_path / "empty.pth")


def test_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint file not found: .*nope\.pth"):
        read_state_dict(tmp_path / "nope.pth")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(
        CheckpointError,
        match=r"no state dict found in checkpoint .*meta\.pth: top-level keys \['epoch', 'lr'\]",
    ):
        read_state_dict(tmp_path / "meta.pth")


class _RunsCode:
    """Pickles as a call to os.system: loading it unsafely would create `marker`."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_carries_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"image_encoder.x": _RunsCode(marker)}, tmp_path / "evil.pth")
    with open(tmp_path / "evil_legacy.pth", "wb") as f:
        pickle.dump({"image_encoder.x": _RunsCode(marker)}, f, protocol=2)

    for name in ("evil.pth", "evil_legacy.pth"):
        with pytest.raises(CheckpointError) as err:
            load_sam(tmp_path / name)
        assert f"refusing to load checkpoint {tmp_path / name}" in str(err.value)
        assert "references posix.system" in str(err.value)
        assert not marker.exists()

    # The payload is live: an unsafe load does run it. This is what we guard against.
    with open(tmp_path / "evil_legacy.pth", "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_save_refuses_unknown_extension_and_empty_models(tiny, tmp_path):
    with pytest.raises(CheckpointError, match=r"unknown extension '\.onnx'"):
        save_sam(tiny, tmp_path / "sam.onnx")
    with pytest.raises(CheckpointError, match="no SAM weights"):
        save_sam({"optimizer.step": torch.zeros(1)}, tmp_path / "sam.pth")


def test_safetensors_file_is_plain(tiny, tmp_path):
    path = save_sam(tiny, tmp_path / "sam.safetensors")
    _assert_same_weights(safetensors.torch.load_file(str(path)), tiny.state_dict())


# ------------------------------------------------------------------ other sizes
def test_resize_position_embeddings_by_hand(tiny):
    state_dict = tiny.state_dict()
    resized = resize_position_embeddings(state_dict, 128)
    pos = state_dict["image_encoder.pos_embed"]
    want = F.interpolate(pos.permute(0, 3, 1, 2), size=(8, 8), mode="bicubic", antialias=True)
    torch.testing.assert_close(resized["image_encoder.pos_embed"], want.permute(0, 2, 3, 1))
    for block in (1, 3):  # global: 2 * 16 - 1 = 31 rows -> 2 * 8 - 1 = 15
        table = state_dict[f"image_encoder.blocks.{block}.attn.rel_pos_h"]
        got = resized[f"image_encoder.blocks.{block}.attn.rel_pos_h"]
        assert table.shape == (31, 32) and got.shape == (15, 32)
        # Linear, align_corners=False: row i samples (i + 0.5) * 31 / 15 - 0.5 of the old table,
        # so row 0 sits 8/15 of the way from row 0 to row 1 and row 7 exactly on row 15.
        torch.testing.assert_close(got[0], table[0] + (table[1] - table[0]) * 8 / 15)
        torch.testing.assert_close(got[7], table[15])
    for block in (0, 2):  # windowed (8 x 8): unchanged
        key = f"image_encoder.blocks.{block}.attn.rel_pos_w"
        assert resized[key] is state_dict[key]
    # A constant embedding stays constant at any size.
    flat = dict(state_dict, **{"image_encoder.pos_embed": torch.full((1, 16, 16, 96), 0.3)})
    bigger = resize_position_embeddings(flat, 512)["image_encoder.pos_embed"]
    assert bigger.shape == (1, 32, 32, 96)
    torch.testing.assert_close(bigger, torch.full_like(bigger, 0.3))
    assert resize_position_embeddings(state_dict, 256).keys() == state_dict.keys()


def test_fine_tune_at_another_size(tiny, tmp_path):
    path = save_sam(tiny, tmp_path / "tiny.pth")
    small = load_sam(path, image_size=128)
    assert small.image_size == 128 and small.prompt_encoder.image_embedding_size == (8, 8)
    with torch.no_grad():
        out = small(
            [
                {
                    "image": torch.rand(3, 128, 96) * 255,
                    "original_size": (200, 150),
                    "boxes": torch.tensor([[10.0, 10.0, 60.0, 90.0]]),
                }
            ],
            multimask_output=True,
        )
    assert out[0]["masks"].shape == (1, 3, 200, 150)
    assert out[0]["low_res_logits"].shape == (1, 3, 32, 32)
    # load_sam keeps the saved size, or resamples to the size asked for.
    save_sam(small, tmp_path / "small.pth")
    assert load_sam(tmp_path / "small.pth", image_size=256).image_size == 256
    assert load_sam(tmp_path / "small.pth").image_size == 128


def test_non_finite_weights_are_refused_by_every_loader(tiny, tmp_path):
    """eval, predict and export read through these two: a NaN tensor is named, not used."""
    from samft.weights.load import read_sam_state_dict

    state_dict = dict(tiny.state_dict())
    state_dict["mask_decoder.iou_token.weight"] = torch.full_like(
        state_dict["mask_decoder.iou_token.weight"], float("nan")
    )
    path = save_sam(state_dict, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"nan\.pth.*mask_decoder\.iou_token\.weight"):
        load_sam(path)
    with pytest.raises(CheckpointError, match=r"nan\.pth.*mask_decoder\.iou_token\.weight"):
        read_sam_state_dict(path)

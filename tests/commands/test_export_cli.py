"""`python -m samft export ...` end to end through the dispatcher and Hydra."""

from __future__ import annotations

import json

import pytest
import torch
from test_export import official_tiny, save_lightning_checkpoint

from samft.__main__ import main


@pytest.fixture(scope="module")
def run_checkpoint(tmp_path_factory):
    return save_lightning_checkpoint(tmp_path_factory.mktemp("run") / "checkpoints" / "last.ckpt")


def test_export_command_writes_official_files_that_load_strict(official, run_checkpoint, tmp_path):
    main(["samft", "export", f"checkpoint={run_checkpoint}", "output=exports/tiny_sam.pth"])
    exports = tmp_path / "exports"
    assert sorted(p.name for p in exports.iterdir()) == [
        "tiny_sam.json",
        "tiny_sam.pth",
        "tiny_sam.safetensors",
    ]
    sidecar = json.loads((exports / "tiny_sam.json").read_text())
    assert (sidecar["variant"], sidecar["image_size"]) == ("tiny", 256)
    reference = official_tiny(official)
    reference.load_state_dict(torch.load(exports / "tiny_sam.pth", weights_only=True), strict=True)


def test_export_command_onnx(run_checkpoint, tmp_path):
    main(["samft", "export", f"checkpoint={run_checkpoint}", "output=m", "format=onnx"])
    assert (tmp_path / "m.encoder.onnx").is_file() and (tmp_path / "m.decoder.onnx").is_file()
    assert "onnx" in json.loads((tmp_path / "m.json").read_text())


def test_export_command_reports_a_wrong_checkpoint_clearly(tmp_path, capsys):
    bad = tmp_path / "weights.ckpt"
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": {"net.w": torch.ones(2)}}, bad)
    with pytest.raises(SystemExit) as exit_info:
        main(["samft", "export", f"checkpoint={bad}", "output=out"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "CheckpointError" in err and "weights.ckpt" in err and "not a SAM state dict" in err


def test_an_export_onto_a_folder_is_refused_before_any_work(tmp_path):
    from samft.io.files import OutputError
    from samft.model.registry import build_sam
    from samft.weights import save_sam
    from samft.weights.export import export_checkpoint

    torch.manual_seed(0)
    weights = save_sam(build_sam("tiny"), tmp_path / "tiny.pth")
    (tmp_path / "m.encoder.onnx").mkdir()
    with pytest.raises(OutputError, match=r"would write the file .*m\.encoder\.onnx, which is a"):
        export_checkpoint(weights, tmp_path / "m.onnx", format="onnx")
    (tmp_path / "n.pth").mkdir()
    with pytest.raises(OutputError, match=r"n\.pth, which is a folder"):
        export_checkpoint(weights, tmp_path / "n", format="official")
    assert not (tmp_path / "n.safetensors").exists() and not (tmp_path / "n.json").exists()


def test_a_transformers_export_of_a_tinyvit_model_says_why_not(tmp_path):
    from samft.model.registry import build_sam
    from samft.weights import save_sam
    from samft.weights.export import export_checkpoint

    weights = save_sam(build_sam("lite_medsam"), tmp_path / "lms.pth")
    with pytest.raises(ValueError) as caught:
        export_checkpoint(weights, tmp_path / "out", format="transformers")
    message = str(caught.value)
    assert "SamModel has only SAM's ViT image encoder" in message and "'lite_medsam'" in message
    assert "format=official" in message and len(message) < 500  # not a list of 292 keys
    assert not (tmp_path / "out").exists()

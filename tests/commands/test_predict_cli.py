"""`python -m samft predict ... prompts=FILE ...` end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from samft.__main__ import main
from samft.model.registry import build_sam
from samft.weights import save_sam

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    return save_sam(build_sam("tiny"), tmp_path_factory.mktemp("w") / "tiny.safetensors")


def test_the_documented_command_line(weights, ct_organs, tmp_path):
    """`python -m samft predict checkpoint=... input=... prompts=... output=...` in a fresh
    process, exactly as the docs write it (`prompts=` although `prompts` is a conf group)."""
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"*": [{"points": [[60, 80]]}, {"box": [10, 10, 150, 150]}]}))
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("amos_0507_31.png", "s0619_32.png"):
        shutil.copy(ct_organs / "images" / name, photos / name)
    command = [sys.executable, "-m", "samft", "predict", f"checkpoint={weights}"]
    command += [f"input={photos}", f"prompts={prompts}", "output=predictions"]
    env = {k: v for k, v in os.environ.items() if k != "SAMFT_COMMAND"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    scores = json.loads((tmp_path / "predictions" / "scores.json").read_text())
    assert [entry["image"] for entry in scores["images"]] == ["amos_0507_31.png", "s0619_32.png"]
    first = scores["images"][0]
    assert (tmp_path / "predictions" / first["overlay"]).is_file()
    assert all((tmp_path / "predictions" / p["mask"]).is_file() for p in first["prompts"])


def test_predict_with_a_prompt_outside_the_image_is_a_clear_error(
    weights, ct_organs, tmp_path, capsys
):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"s0114_111.png": [{"points": [[300, 20]]}]}))
    with pytest.raises(SystemExit):
        main(
            [
                "samft",
                "predict",
                f"checkpoint={weights}",
                f"input={ct_organs / 'images'}",
                f"prompts={prompts}",
                "output=out",
            ]
        )
    err = capsys.readouterr().err
    assert "image 's0114_111.png', prompt 'prompt_0': point (x=300, y=20) lies outside" in err


def test_predict_with_an_empty_prompts_file_is_a_clear_error(weights, ct_organs, tmp_path, capsys):
    prompts = tmp_path / "p.json"
    prompts.write_text("")
    with pytest.raises(SystemExit):
        main(
            [
                "samft",
                "predict",
                f"checkpoint={weights}",
                f"input={ct_organs / 'images'}",
                f"prompts={prompts}",
                "output=out",
            ]
        )
    assert f"prompts file {prompts} is empty" in capsys.readouterr().err


def test_missing_input_is_a_short_error_not_a_traceback(tmp_path):
    from demo_cli import run_samft

    prompts = tmp_path / "p.json"
    prompts.write_text('{"a.png": [{"points": [[1, 1]], "labels": [1]}]}')
    result = run_samft(
        ["predict", "checkpoint=x.pth", f"input={tmp_path}/nope", f"prompts={prompts}",
         f"output={tmp_path}/out"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "no such image or folder" in result.stderr and "Traceback" not in result.stderr


def _predict_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["samft", "predict", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" not in err and "samft predict: error:" in err
    return err


def test_a_non_image_file_in_the_input_folder_is_one_line(weights, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "notes.png").write_text("not a picture, although it is named like one")
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"*": [{"points": [[5, 5]]}]}))
    args = [f"checkpoint={weights}", f"input={photos}", f"prompts={prompts}", "output=out"]
    err = _predict_error(args, capsys)
    assert f"{photos / 'notes.png'} is not an image samft can read" in err


def test_an_image_over_the_pixel_limit_names_the_key(weights, ct_organs, tmp_path, capsys):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"*": [{"points": [[5, 5]]}]}))
    image = ct_organs / "images" / "s0619_32.png"
    args = [f"checkpoint={weights}", f"input={image}", f"prompts={prompts}", "output=out"]
    try:
        err = _predict_error([*args, "max_image_pixels=100"], capsys)
    finally:
        from samft.data.images import allow_image_pixels

        allow_image_pixels(None)
    assert f"image file {image} has" in err and "allow it with max_image_pixels=" in err

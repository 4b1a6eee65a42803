"""scripts/bench_finetune.py's device options: what a GPU run trains and scores with.

The runs themselves take minutes to an hour (docs/results.md); these tests check the
configs and options they are built from, which is where a GPU run would go wrong unseen
(the recipes pin the CPU trainer in their defaults list).
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bench(scripts):
    return scripts("bench_finetune")


@pytest.mark.parametrize("mode", ["decoder", "lora", "clicks"])
def test_cuda_overrides_replace_the_recipes_cpu_trainer(bench, mode, tmp_path):
    specs = bench.dataset_specs(tmp_path)
    overrides = bench.device_overrides("cuda", bench.DEFAULT_PRECISION["cuda"])
    cfg = bench.compose_train_config(mode, specs, tmp_path / mode, overrides)
    assert cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.devices == 1
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.data.num_workers == 4
    recipe = bench.compose_train_config(mode, specs, tmp_path / mode, [])
    assert recipe.trainer.accelerator == "cpu"  # the recipe as written
    assert cfg.trainer.max_steps == recipe.trainer.max_steps  # its own length kept
    assert cfg.trainer.max_epochs == recipe.trainer.max_epochs


def test_cpu_overrides_keep_the_recipe_and_set_the_precision(bench, tmp_path):
    specs = bench.dataset_specs(tmp_path)
    cfg = bench.compose_train_config(
        "decoder", specs, tmp_path / "decoder", bench.device_overrides("cpu", "bf16-mixed")
    )
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.data.num_workers == 0


@pytest.mark.parametrize(("device", "accelerator"), [("cpu", "cpu"), ("cuda", "gpu")])
def test_scoring_runs_on_the_device_in_fp32(bench, monkeypatch, device, accelerator):
    import samft.evaluate.prompted as prompted

    calls = []

    class Summary:
        metrics = {"miou/click_1": 0.5, "miou/box": 0.7}

    def fake_evaluate_checkpoint(checkpoint, spec, **options):
        calls.append(options)
        return Summary()

    monkeypatch.setattr(prompted, "evaluate_checkpoint", fake_evaluate_checkpoint)
    metrics = bench.evaluate("ckpt", {}, None, clicks=True, device=device)
    assert metrics == {"miou/click_1": 0.5, "miou/box": 0.7}
    assert [c["trainer_options"] for c in calls] == [
        {"accelerator": accelerator, "precision": "32-true"}
    ] * 2
    assert [tuple(c["clicks"]) for c in calls] == [(), bench.CLICKS]


def test_cuda_without_a_gpu_is_a_one_line_exit(bench, monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    output = tmp_path / "figures.json"
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--device", "cuda", "--modes", "zero_shot", "--output", str(output)])
    message = str(exit_info.value.code)
    assert message.startswith("--device cuda:") and "no CUDA device" in message
    assert "\n" not in message
    assert not output.exists()  # no run started

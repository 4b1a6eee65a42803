"""SamFineTuner on real data: decoding matches official-layout calls, the loss falls,
LoRA trains only adapters."""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from samft.data.datamodule import SamDataModule
from samft.data.prompts import PromptSampler
from samft.model import batched
from samft.model.prompts import Prompts
from samft.train.module import SamFineTuner


def _datamodule(ct_organs, **kwargs) -> SamDataModule:
    spec = {
        "format": "coco",
        "annotations": str(ct_organs / "annotations.json"),
        "images": str(ct_organs),
    }
    options = dict(
        image_size=256,
        batch_size=2,
        num_workers=0,
        max_objects_per_image=4,
        prompts=PromptSampler(
            point_prob=0.5, box_prob=0.5, num_points=(1, 3), num_negatives=(0, 1)
        ),
        seed=0,
    )
    options.update(kwargs)
    return SamDataModule(train=spec, val=spec, **options)


def _module(**finetune) -> SamFineTuner:
    return SamFineTuner(
        model={"variant": "tiny"},
        finetune={"image_encoder": "full", **finetune},
        optim={"lr": 1e-3, "warmup_steps": 0, "schedule": "constant"},
        interactive={"val_clicks": [1]},
    )


def test_batched_decode_equals_one_official_call_per_object(ct_organs):
    dm = _datamodule(ct_organs)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    module = _module().eval()
    with torch.no_grad():
        emb = module.encode_images(batch.images)
        # append a correction click per object: rows get different lengths and pads
        coords = torch.cat(
            [batch.prompts.coords, torch.full_like(batch.prompts.coords[:, :1], 40.0)], 1
        )
        labels = torch.cat([batch.prompts.labels, torch.zeros_like(batch.prompts.labels[:, :1])], 1)
        prompts = Prompts(coords, labels, batch.prompts.mask_inputs, batch.prompts.has_mask_input)
        low, iou, answering = batched.decode(
            module.model, emb, batch.object_image_index, prompts, True
        )
        pe, dec = module.model.prompt_encoder, module.model.mask_decoder
        assert len(set(batch.prompt_types.tolist())) > 1, "want mixed prompt types"
        for row in range(labels.shape[0]):
            keep = labels[row] != -1
            lab, pts = labels[row][keep], coords[row][keep]
            is_box = (lab == 2) | (lab == 3)
            box = pts[is_box].reshape(1, 4) if is_box.any() else None
            points = (pts[~is_box][None], lab[~is_box][None]) if (~is_box).any() else None
            sparse, dense = pe(points=points, boxes=box, masks=None)
            image = batch.object_image_index[row]
            for multimask, outputs in ((True, slice(1, None)), (False, slice(0, 1))):
                ref_low, ref_iou = dec(
                    emb[image : image + 1], pe.get_dense_pe(), sparse, dense, multimask
                )
                torch.testing.assert_close(low[row : row + 1, outputs], ref_low, atol=1e-4, rtol=0)
                torch.testing.assert_close(iou[row : row + 1, outputs], ref_iou, atol=1e-4, rtol=0)
        assert answering[:, 1:].all() and not answering[:, 0].any()  # multimask forced on


@pytest.mark.parametrize("variant", ["tiny", "sam2_tiny"])
def test_cpu_inference_in_small_decoder_calls_equals_one_call(variant, monkeypatch):
    from samft.model.registry import build_sam

    torch.manual_seed(0)
    sam = build_sam(variant)
    h, w = sam.prompt_encoder.image_embedding_size
    images = [torch.randint(0, 256, (3, 256, 256), dtype=torch.uint8) for _ in range(2)]
    num = 7
    coords = torch.rand(num, 3, 2) * 255
    labels = torch.tensor([[1, -1, -1], [1, 0, 1], [2, 3, -1]] * 2 + [[0, 1, -1]])
    has_mask = torch.tensor([True, False, True, False, False, True, True])
    prompts = Prompts(coords, labels, torch.randn(num, 1, 4 * h, 4 * w), has_mask)
    image_index = torch.tensor([0, 1, 1, 0, 1, 0, 1])
    with torch.no_grad():
        features = batched.encode_images(sam, images)
    expected = batched.decode(sam, features, image_index, prompts, "auto")  # autograd: one call
    per_prompt = 8 * sam.prompt_encoder.embed_dim * h * w
    monkeypatch.setattr(batched, "CPU_CALL_BYTES", 2 * per_prompt)
    calls = []
    decode_all = sam.decode_all
    monkeypatch.setattr(sam, "decode_all", lambda *a: calls.append(len(a[1])) or decode_all(*a))
    with torch.no_grad():
        assert batched.prompts_per_call(sam, torch.device("cpu")) == 2
        got = batched.decode(sam, features, image_index, prompts, "auto")
    assert max(calls) == 2 and sum(calls) == num  # three layouts, each in calls of <= 2
    for name in ("low_res", "iou_pred", "answering", "object_score"):
        if getattr(expected, name) is None:
            assert getattr(got, name) is None
        else:
            torch.testing.assert_close(getattr(got, name), getattr(expected, name).detach())


def test_prompts_go_to_the_decoder_at_once_with_autograd_or_off_the_cpu():
    from samft.model.registry import build_sam

    sam = build_sam("tiny")
    assert batched.prompts_per_call(sam, torch.device("cpu")) is None  # autograd records
    with torch.no_grad():
        assert batched.prompts_per_call(sam, torch.device("cuda")) is None
        h, w = sam.prompt_encoder.image_embedding_size
        expected = batched.CPU_CALL_BYTES // (8 * sam.prompt_encoder.embed_dim * h * w)
        assert batched.prompts_per_call(sam, torch.device("cpu")) == expected


def test_auto_multimask_answers_only_a_single_point_with_three_masks():
    labels = torch.tensor([[1, -1], [1, 1], [1, 0], [2, 3], [0, -1]])
    answering = batched.answering_outputs(labels, "auto")
    assert answering.tolist() == [
        [False, True, True, True],
        [True, False, False, False],
        [True, False, False, False],
        [True, False, False, False],
        [True, False, False, False],
    ]
    assert batched.answering_outputs(labels, False)[:, 0].all()


def _fit(module, dm, tmp_path, steps, precision="32-true"):
    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision,
        max_steps=steps,
        logger=CSVLogger(tmp_path, name="", version=""),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        enable_model_summary=False,
        inference_mode=False,
    )
    trainer.fit(module, datamodule=dm)
    with open(tmp_path / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_loss_falls_on_real_ct_data(ct_organs, tmp_path):
    torch.manual_seed(0)
    losses = _fit(_module(), _datamodule(ct_organs), tmp_path, steps=24)
    assert len(losses) == 24
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.6 * first, (first, last)


def test_bf16_mixed_trains_with_mask_prompts_and_the_loss_falls(ct_organs, tmp_path):
    """bf16 autocast (the GPU presets, and a CPU with AMX) with correction rounds, whose
    mask prompts are embedded in bf16 beside fp32 `no_mask_embed` rows."""
    torch.manual_seed(0)
    module = SamFineTuner(
        model={"variant": "tiny"},
        finetune={"image_encoder": "full"},
        optim={"lr": 1e-3, "warmup_steps": 0, "schedule": "constant"},
        interactive={"val_clicks": [1], "correction_rounds": 2},
    )
    losses = _fit(module, _datamodule(ct_organs), tmp_path, steps=24, precision="bf16-mixed")
    assert len(losses) == 24 and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.6 * first, (first, last)
    assert all(p.dtype == torch.float32 for p in module.parameters())  # fp32 master weights


def test_dense_embeddings_under_autocast_keep_fp32_rows():
    module = _module()
    pe = module.model.prompt_encoder
    h, w = pe.image_embedding_size
    masks = torch.randn(3, 1, 4 * h, 4 * w)
    has_mask = torch.tensor([True, False, True])
    expected = batched.dense_embeddings(module.model, masks, has_mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense = batched.dense_embeddings(module.model, masks, has_mask)
    assert dense.dtype == torch.float32
    torch.testing.assert_close(dense[1], expected[1], atol=0, rtol=0)  # no mask: exact
    torch.testing.assert_close(dense, expected, atol=0.05, rtol=0.02)  # bf16 convolutions


def test_lora_trains_only_adapters_in_the_encoder(ct_organs, tmp_path):
    module = _module(image_encoder="lora", lora_rank=2, lora_alpha=4.0)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    _fit(module, _datamodule(ct_organs), tmp_path, steps=3)
    after = module.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    encoder_changed = {k for k in changed if k.startswith("image_encoder.")}
    assert encoder_changed, "LoRA adapters did not train"
    assert all(k.endswith(".lora_A") or k.endswith(".lora_B") for k in encoder_changed)
    assert any(k.endswith(".lora_A") for k in encoder_changed)
    assert any(k.startswith("mask_decoder.") for k in changed)


def test_frozen_encoder_builds_no_graph(ct_organs):
    module = SamFineTuner(model={"variant": "tiny"}, finetune={"image_encoder": "frozen"})
    dm = _datamodule(ct_organs)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert not module.encode_images(batch.images).requires_grad
    assert not any(p.requires_grad for p in module.model.image_encoder.parameters())
    assert module.model.training, "Lightning does not call train(): the module must"


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lora_rnk'\] in config group"):
        SamFineTuner(model={"variant": "tiny"}, finetune={"lora_rnk": 4})
    with pytest.raises(ValueError, match="finetune.image_encoder"):
        SamFineTuner(model={"variant": "tiny"}, finetune={"image_encoder": "partial"})


@pytest.mark.parametrize("loss_rounds", ["all", "first", "last"])
def test_training_step_runs_the_papers_interactive_rounds(ct_organs, loss_rounds, monkeypatch):
    """2 correction rounds (a click each, from the error region) then 1 mask-only round:
    four decoder calls, the mask prompt fed back from round 1 on, one click more per
    correction round and none in the mask-only round; the step's loss is the mean of the
    counted rounds' losses."""
    torch.manual_seed(0)
    module = SamFineTuner(
        model={"variant": "tiny"},
        finetune={"image_encoder": "frozen"},
        interactive={
            "correction_rounds": 2,
            "mask_only_rounds": 1,
            "loss_rounds": loss_rounds,
            "click_mode": "center",
            "multimask_output": "auto",
        },
    )
    dm = _datamodule(ct_organs)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    calls, losses = [], []
    decode = batched.decode

    def spy_decode(sam, embeddings, image_index, prompts, multimask_output):
        calls.append((prompts, multimask_output))
        return decode(sam, embeddings, image_index, prompts, multimask_output)

    loss_fn = module.loss_fn.forward

    def spy_loss(*args, **kwargs):
        out = loss_fn(*args, **kwargs)
        losses.append(out.total.detach())
        return out

    monkeypatch.setattr(batched, "decode", spy_decode)
    monkeypatch.setattr(module.loss_fn, "forward", spy_loss)
    total = module.training_step(batch, 0)

    assert len(calls) == 4 and len(losses) == 4
    tokens = [prompts.labels.shape[1] for prompts, _ in calls]
    first_tokens = batch.prompts.labels.shape[1]
    assert tokens == [first_tokens, first_tokens + 1, first_tokens + 2, first_tokens + 2]
    assert not calls[0][0].has_mask_input.any()
    assert all(prompts.has_mask_input.all() for prompts, _ in calls[1:])
    assert calls[0][1] == "auto" and all(mm is False for _, mm in calls[1:])
    # each correction click is a positive (1) or negative (0) point inside the image
    for prompts, _ in calls[1:3]:
        new = prompts.labels[:, -1]
        assert ((new == 0) | (new == 1)).all()
    counted = {"all": [0, 1, 2, 3], "first": [0], "last": [3]}[loss_rounds]
    expected = torch.stack([losses[i] for i in counted]).mean()
    torch.testing.assert_close(total.detach(), expected, rtol=1e-5, atol=1e-6)
    total.backward()
    grads = [p.grad for p in module.model.mask_decoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_first_and_sampled_trains_the_first_and_a_drawn_last_round(ct_organs, monkeypatch):
    """`first_and_sampled`: each step stops after a drawn number of later rounds (every
    count from 1 to all of them occurs, the same for the same step), the loss is the mean
    of the first and the last round, and the rounds between run without gradients."""
    torch.manual_seed(0)
    interactive = {"correction_rounds": 2, "mask_only_rounds": 1}
    module = SamFineTuner(
        model={"variant": "tiny"},
        interactive={**interactive, "loss_rounds": "first_and_sampled"},
    )
    plans = [module.trained_rounds(step) for step in range(40)]
    assert {n for n, _ in plans} == {2, 3, 4}
    assert all(counted == {0, n - 1} for n, counted in plans)
    assert module.trained_rounds(7) == plans[7]
    every = SamFineTuner(model={"variant": "tiny"}, interactive=interactive)
    assert every.trained_rounds(0) == (4, {0, 1, 2, 3})

    dm = _datamodule(ct_organs)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    step = next(i for i, (n, _) in enumerate(plans) if n == 4)
    losses = []
    loss_fn = module.loss_fn.forward

    def spy_loss(*args, **kwargs):
        out = loss_fn(*args, **kwargs)
        losses.append(out.total)
        return out

    monkeypatch.setattr(module.loss_fn, "forward", spy_loss)
    total = module.training_step(batch, step)
    assert len(losses) == 4
    assert losses[0].requires_grad and losses[3].requires_grad
    assert not losses[1].requires_grad and not losses[2].requires_grad
    torch.testing.assert_close(total.detach(), (losses[0] + losses[3]).detach() / 2)


@pytest.mark.parametrize("feedback_mask", ["predicted", "lowest_loss"])
def test_next_round_builds_on_the_chosen_multimask_output(ct_organs, feedback_mask, monkeypatch):
    """Single points answer with three masks; the next round is fed the low-res logits of
    the one the IoU head scores highest (`predicted`, the SAM paper's choice) or of the
    lowest-loss one (`lowest_loss`), whichever `interactive.feedback_mask` says."""
    torch.manual_seed(0)
    module = SamFineTuner(
        model={"variant": "tiny"},
        interactive={"correction_rounds": 1, "feedback_mask": feedback_mask},
    )
    single_points = PromptSampler(point_prob=1.0, box_prob=0.0, num_points=(1, 1))
    dm = _datamodule(ct_organs, prompts=single_points)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    outputs, chosen = [], []
    decode = batched.decode

    def spy_decode(sam, embeddings, image_index, prompts, multimask_output):
        out = decode(sam, embeddings, image_index, prompts, multimask_output)
        outputs.append((prompts, out))
        return out

    loss_fn = module.loss_fn.forward

    def spy_loss(*args, **kwargs):
        out = loss_fn(*args, **kwargs)
        chosen.append(out.best_index)
        return out

    monkeypatch.setattr(batched, "decode", spy_decode)
    monkeypatch.setattr(module.loss_fn, "forward", spy_loss)
    module.training_step(batch, 0)

    first = outputs[0][1]
    assert first.answering[:, 1:].all() and not first.answering[:, 0].any()
    predicted = first.iou_pred.masked_fill(~first.answering, float("-inf")).argmax(dim=1)
    lowest_loss = chosen[0]
    assert (predicted != lowest_loss).any()  # the two choices differ for this batch
    expected = predicted if feedback_mask == "predicted" else lowest_loss
    rows = torch.arange(len(expected))
    fed_back = outputs[1][0].mask_inputs[:, 0]
    torch.testing.assert_close(fed_back, first.low_res[rows, expected].detach())


def test_click_mode_typo_is_refused_at_start():
    with pytest.raises(ValueError, match="interactive.click_mode must be one of"):
        SamFineTuner(model={"variant": "tiny"}, interactive={"click_mode": "centre"})
    with pytest.raises(ValueError, match="interactive.feedback_mask must be one of"):
        SamFineTuner(model={"variant": "tiny"}, interactive={"feedback_mask": "oracle"})
    with pytest.raises(ValueError, match=r"loss.focal_weight='abc': expected float"):
        SamFineTuner(model={"variant": "tiny"}, loss={"focal_weight": "abc"})


def test_automatic_points_add_their_weighted_loss_to_the_step(ct_organs):
    from samft.train.automatic_loss import automatic_point_loss

    dm = _datamodule(ct_organs, automatic_points_per_image=3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.automatic is not None and batch.automatic.points.shape == (6, 2)
    torch.manual_seed(0)
    module = _module()
    logged: dict[str, torch.Tensor] = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    with torch.no_grad():
        module.loss_config.automatic_weight = 0.0
        without = module.training_step(batch, 0)
        module.loss_config.automatic_weight = 0.5
        with_points = module.training_step(batch, 0)
        emb = module.encode_images(batch.images)
        auto = automatic_point_loss(
            module.model, module.loss_fn, emb, batch.automatic, batch.input_sizes, 6.0
        )
    assert auto.total.item() > 0
    torch.testing.assert_close(with_points, without + 0.5 * auto.total)
    torch.testing.assert_close(logged["train/loss_automatic"], auto.total)

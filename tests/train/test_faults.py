"""Fault guards of training, in-process on a toy module: NaN/Inf, signals, checkpoint
writes, the run-folder lock, resume checks and the CSV log of a resumed run."""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import signal
import socket
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

from samft.commands.resume import keep_earlier_metrics, resume_checkpoint
from samft.io.atomic import AtomicCheckpointIO, previous_of, save_atomic
from samft.io.files import OutputError, mount_point
from samft.model.registry import build_sam
from samft.train.callbacks import (
    FiniteModelCheckpoint,
    NanGuard,
    NonFiniteTrainingError,
    SaveOnSignal,
)
from samft.train.run_lock import LOCK_NAME, RunFolderInUseError, RunLock, is_launcher_process
from samft.weights.finite import assert_finite
from samft.weights.read import CheckpointError
from samft.weights.save import save_sam


class Toy(L.LightningModule):
    """y = w x on random data; `lr` huge makes it diverge, `signal_at` sends a signal."""

    def __init__(self, lr=0.01, signal_at=None, signum=signal.SIGUSR1, finetune="frozen"):
        super().__init__()
        self.save_hyperparameters({"finetune": {"image_encoder": finetune}})
        self.layer = nn.Linear(4, 1)
        self.lr, self.signal_at, self.signum = lr, signal_at, signum

    def training_step(self, batch, batch_idx):
        if self.signal_at == self.global_step:
            os.kill(os.getpid(), self.signum)
        x = batch[0]
        loss = (self.layer(x) ** 2).mean() * 1e20
        self.log("train/loss", loss)
        return loss

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(64, 4) * 1e10)
        return torch.utils.data.DataLoader(data, batch_size=4)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _trainer(tmp_path, callbacks, **kwargs):
    return L.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_steps=kwargs.pop("max_steps", 8),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        **kwargs,
    )


# ------------------------------------------------------------------------ 1. NaN / Inf
def test_nan_guard_skips_then_stops_naming_step_and_loss_term(tmp_path):
    model = Toy(lr=1e30)
    guard = NanGuard(max_skipped_steps=2)
    with pytest.raises(NonFiniteTrainingError, match=r"step \d+.*train/loss"):
        _trainer(tmp_path, [guard]).fit(model)
    assert guard.skipped_in_a_row == 2
    assert all(torch.isfinite(p).all() for p in model.parameters()), "skipped steps moved no weight"


def test_finite_model_checkpoint_never_keeps_nan_as_best(tmp_path):
    callback = FiniteModelCheckpoint(dirpath=tmp_path, monitor="val/miou", mode="max")
    trainer = _trainer(tmp_path, [])
    assert not callback.check_monitor_top_k(trainer, torch.tensor(float("nan")))
    assert callback.check_monitor_top_k(trainer, torch.tensor(0.5))
    assert callback.state_key.startswith("ModelCheckpoint{")


def test_assert_finite_names_file_and_tensor():
    assert_finite({"a": torch.zeros(2), "step": torch.tensor(3)}, "ok.pth")
    with pytest.raises(CheckpointError, match=r"checkpoint bad.pth: tensor b holds NaN/Inf"):
        assert_finite({"a": torch.zeros(2), "b": torch.tensor([1.0, float("inf")])}, "bad.pth")


# ------------------------------------------------------------------------- 2. signals
@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM, signal.SIGINT])
def test_signal_saves_last_ckpt_then_stops(tmp_path, signum):
    # the handler the process had (default_int_handler; SIG_IGN in a background job)
    sigint_before = signal.getsignal(signal.SIGINT)
    saver = SaveOnSignal(dirpath=tmp_path / "checkpoints")
    trainer = _trainer(tmp_path, [saver])
    with pytest.raises(SIGTERMException):
        trainer.fit(Toy(signal_at=2, signum=signum))
    assert saver.received == signum
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3, "the step in flight finished, then the run stopped"
    assert signal.getsignal(signal.SIGINT) is sigint_before, "the run's handlers are undone"


class ToyWithValidation(Toy):
    """`Toy` on 16 samples (4 steps an epoch) with a validation of 2 batches each epoch."""

    def __init__(self, signal_at=None):
        super().__init__(signal_at=signal_at)

    def training_step(self, batch, batch_idx):
        if self.signal_at == self.global_step:
            os.kill(os.getpid(), self.signum)
        loss = (self.layer(batch[0]) ** 2).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", (self.layer(batch[0]) ** 2).mean())

    def train_dataloader(self):
        data = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=4)

    def val_dataloader(self):
        data = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=4)


def _logged_rows(root: Path, callbacks: list, model: L.LightningModule, **fit) -> list[tuple]:
    """Fit `model` for 3 epochs logging every step into `root/csv/metrics.csv` (one file
    across resumes, as `samft train` keeps it); its rows as (epoch, step, what was logged)."""
    logger = CSVLogger(root, name="csv", version="")
    if fit.get("ckpt_path"):
        resumed = torch.load(fit["ckpt_path"], weights_only=True)["global_step"]
        keep_earlier_metrics([logger], resumed)
    trainer = L.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        max_epochs=3,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
    )
    with contextlib.suppress(SIGTERMException):  # the stopped run: its checkpoint is saved
        trainer.fit(model, weights_only=True, **fit)
    with open(root / "csv" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [(r["epoch"], r["step"], "val" if r.get("val/loss") else "train") for r in rows]


@pytest.mark.parametrize("signal_at", [3, 1], ids=["last_batch", "mid_epoch"])
def test_a_run_stopped_and_resumed_logs_the_rows_of_an_uninterrupted_run(tmp_path, signal_at):
    """A stop on an epoch's last batch cuts the validation that follows it short: the
    resumed run runs that validation again, then goes on with the next step and epoch."""
    expected = _logged_rows(tmp_path / "whole", [], ToyWithValidation())
    assert len(expected) == 3 * (4 + 1)  # 4 steps and 1 validation an epoch
    run = tmp_path / "stopped"
    saver = SaveOnSignal(dirpath=run / "checkpoints")
    stopped = _logged_rows(run, [saver], ToyWithValidation(signal_at=signal_at))
    assert stopped == expected[: signal_at + 1]  # the steps up to the signal, no validation
    last = run / "checkpoints" / "last.ckpt"
    resumed = _logged_rows(
        run, [SaveOnSignal(dirpath=run / "again")], ToyWithValidation(), ckpt_path=last
    )
    assert resumed == expected


# ------------------------------------------------------------------ 3. checkpoint writes
def test_unwritable_checkpoint_folder_names_path_and_os_error(tmp_path):
    blocker = tmp_path / "checkpoints"
    blocker.write_text("a file where the folder should be")  # fails as root too
    with pytest.raises(
        OutputError, match=r"cannot save checkpoint .*checkpoints/last.ckpt: File exists"
    ):
        AtomicCheckpointIO().save_checkpoint({"x": torch.zeros(3)}, blocker / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]


def test_full_disk_leaves_no_temp_file(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match="no space left on .* saving checkpoint"):
        save_atomic({"x": torch.zeros(3)}, tmp_path / "last.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_save_keeps_previous_last_and_resume_falls_back_to_it(tmp_path, caplog):
    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    good = {"pytorch-lightning_version": "2", "global_step": 1}
    io.save_checkpoint(good, last)
    io.save_checkpoint({**good, "global_step": 2}, last)
    assert torch.load(previous_of(last))["global_step"] == 1
    last.write_bytes(last.read_bytes()[:50])  # a damaged file
    assert resume_checkpoint(str(last), "frozen") == str(previous_of(last))
    assert "cannot be read" in caplog.text
    previous_of(last).unlink()
    with pytest.raises(CheckpointError, match=r"ckpt_path=.*last.ckpt: cannot be read"):
        resume_checkpoint(str(last), "frozen")


# ----------------------------------------------------------------------- 4. CSV on resume
def _rows(path: Path) -> list[tuple[str, str, str]]:
    with open(path, newline="") as handle:
        return [
            (r["step"], r.get("train/loss", ""), r.get("val/miou", ""))
            for r in csv.DictReader(handle)
        ]


def test_resumed_run_keeps_every_metrics_row_in_one_file(tmp_path):
    first = CSVLogger(tmp_path, name="csv", version="")
    for step in (0, 4, 8):  # the run saved its checkpoint at step 4, then went on to 8
        first.log_metrics({"train/loss": 1.0 - step / 10}, step=step)
    first.save()
    second = CSVLogger(tmp_path, name="csv", version="")
    keep_earlier_metrics([second], resume_step=5)  # resumed from the step-4 checkpoint
    second.log_metrics({"train/loss": 0.45}, step=5)
    second.log_metrics({"val/miou": 0.7}, step=6)  # a new column: the file is rewritten
    second.save()
    assert _rows(tmp_path / "csv" / "metrics.csv") == [
        ("0", "1.0", ""), ("4", "0.6", ""), ("5", "0.45", ""), ("6", "", "0.7")
    ]  # fmt: skip
    assert len(_rows(tmp_path / "csv" / "metrics-1.csv")) == 3  # the backup, whole
    third = CSVLogger(tmp_path, name="csv", version="")  # a second resume keeps them all
    keep_earlier_metrics([third], resume_step=None)
    third.log_metrics({"train/loss": 0.4}, step=7)
    third.save()
    assert [r[0] for r in _rows(tmp_path / "csv" / "metrics.csv")] == ["0", "4", "5", "6", "7"]


# ---------------------------------------------------------------------- 5. run lock
def test_second_run_in_a_folder_is_refused(tmp_path):
    with RunLock(tmp_path):
        info = json.loads((tmp_path / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        with pytest.raises(
            RunFolderInUseError, match=rf"in use by another samft run \(pid {os.getpid()}"
        ):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()


def test_stale_lock_is_taken_over(tmp_path):
    dead = {"pid": 2**22 + 12345, "host": socket.gethostname(), "started": time.time()}
    (tmp_path / LOCK_NAME).write_text(json.dumps(dead))
    with RunLock(tmp_path) as lock:
        assert lock.held


def test_folder_with_checkpoints_is_reused_only_to_resume(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(RunFolderInUseError, match="resume it with ckpt_path="):
        RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    RunLock(tmp_path, resume=True).acquire().release()


def test_only_rank_zero_takes_the_lock(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert is_launcher_process()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not is_launcher_process()


# --------------------------------------------------------------------- 6. resume checks
def test_resume_from_weights_file_explains_model_checkpoint(tmp_path):
    path = tmp_path / "sam.pth"
    torch.save({"image_encoder.x": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"ckpt_path resumes .*model.checkpoint="):
        resume_checkpoint(str(path), "frozen")


def test_resume_lora_into_full_finetune_is_explained(tmp_path):
    path = tmp_path / "last.ckpt"
    ckpt = {"pytorch-lightning_version": "2", "hyper_parameters": {"finetune": {}}}
    ckpt["hyper_parameters"]["finetune"]["image_encoder"] = "lora"
    torch.save(ckpt, path)
    assert resume_checkpoint(str(path), "lora") == str(path)
    with pytest.raises(CheckpointError, match="image_encoder=lora, but this run uses .*=full"):
        resume_checkpoint(str(path), "full")


@pytest.mark.parametrize(
    "variant, image_size, expected",
    [
        ("lite_medsam", 256, "variant tiny at 256 px, but this run builds lite_medsam at 256 px"),
        ("tiny", 512, "variant tiny at 256 px, but this run builds tiny at 512 px"),
    ],
)
def test_resume_into_another_variant_or_size_names_both(tmp_path, variant, image_size, expected):
    path = tmp_path / "last.ckpt"
    model = {"variant": "tiny", "image_size": None}  # None: the variant's own size, 256
    torch.save({"pytorch-lightning_version": "2", "hyper_parameters": {"model": model}}, path)
    assert resume_checkpoint(str(path), "frozen", "tiny", 256) == str(path)
    with pytest.raises(CheckpointError, match=expected) as caught:
        resume_checkpoint(str(path), "frozen", variant, image_size)
    assert "model.checkpoint=" in str(caught.value) and len(str(caught.value)) < 400


# ------------------------------------------------------------------- a full disk, for real
def _full_disk_at(tmp: Path) -> None:
    """Make the temporary file a save writes through a link to /dev/full: every write
    there fails with ENOSPC, as on a full disk."""
    tmp.symlink_to("/dev/full")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_keeps_the_previous_checkpoint_and_names_the_device(tmp_path):
    last = tmp_path / "last.ckpt"
    save_atomic({"global_step": 1}, last, keep_previous=True)
    _full_disk_at(tmp_path / ".last.ckpt.tmp")
    with pytest.raises(OutputError) as caught:
        save_atomic({"global_step": 2}, last, keep_previous=True)
    message = str(caught.value)
    assert message.startswith(f"no space left on {mount_point(tmp_path)} saving checkpoint {last}")
    assert torch.load(last, weights_only=True)["global_step"] == 1  # the previous one is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_full_disk_when_saving_weights_is_one_sentence(tmp_path, suffix):
    target = tmp_path / f"initial{suffix}"
    _full_disk_at(tmp_path / f".{target.name}.{os.getpid()}.tmp")
    with pytest.raises(OutputError, match=f"^no space left on .* writing {target}"):
        save_sam(build_sam("tiny"), target)
    assert not target.exists()


def test_a_disk_that_fills_during_a_save_is_one_sentence(small_disk):
    """A real full file system: torch's writer fails with 'unexpected pos' there."""
    last = small_disk / "last.ckpt"
    save_atomic({"global_step": 1}, last, keep_previous=True)
    with pytest.raises(OutputError, match=f"^no space left on {small_disk} saving checkpoint"):
        save_atomic({"global_step": 2, "w": torch.zeros(200_000)}, last, keep_previous=True)
    assert torch.load(last, weights_only=True)["global_step"] == 1
    with pytest.raises(OutputError, match=f"^no space left on {small_disk} writing"):
        save_sam(build_sam("tiny"), small_disk / "initial.pth")


def test_a_full_disk_deep_inside_a_library_is_one_line_exit_2():
    from samft.__main__ import describe_error

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/run/csv/metrics.csv")
        except OSError as inner:
            raise RuntimeError("a logger failed") from inner
    except RuntimeError as outer:
        code, message = describe_error(outer, "train", [])
    assert code == 2
    assert message.startswith("OutputError: no space left on / writing /run/csv/metrics.csv")


def test_an_allocation_too_large_for_the_machine_is_one_sentence():
    from samft.__main__ import describe_error

    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**50, dtype=torch.uint8)  # 1 PiB: more than any machine running this
    code, message = describe_error(caught.value, "train", [])
    assert code == 2 and message.startswith("OutOfMemory: the CPU could not allocate 1048576.0 GiB")
    assert "data.batch_size" in message and "\n" not in message

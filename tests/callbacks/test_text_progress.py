"""Plain progress lines when stdout is not a terminal (log files under nohup, SLURM, CI)."""

from __future__ import annotations

import logging
import subprocess
import sys

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar
from torch.utils.data import DataLoader, TensorDataset

from llvq.callbacks.text_progress import LineProgress, progress_bar
from llvq.progress import format_duration, progress_line, track
from tests.conftest import ROOT


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.lin(batch[0]).square().mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(12, 2)), batch_size=2)


def test_factory_picks_lines_without_a_terminal(monkeypatch) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert isinstance(progress_bar(), LineProgress)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.delenv("LLVQ_PLAIN_PROGRESS", raising=False)
    assert isinstance(progress_bar(), RichProgressBar)
    monkeypatch.setenv("LLVQ_PLAIN_PROGRESS", "1")
    assert isinstance(progress_bar(), LineProgress)


def test_line_progress_logs_steps_rate_and_eta(caplog, tmp_path) -> None:
    trainer = L.Trainer(max_epochs=2, callbacks=[LineProgress(every=0)], logger=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="llvq"):
        trainer.fit(_Tiny())
    lines = [r.getMessage() for r in caplog.records if r.name == "llvq"]
    steps = [ln for ln in lines if ln.startswith("epoch ")]
    assert len(steps) == 12, lines  # one per step with every=0
    assert "step 1/12 (8%)" in steps[0] and "it/s" in steps[0] and "left" in steps[0]
    assert "train/loss=" in steps[-1]
    assert any(ln.startswith("training done in") and "step 12/12" in ln for ln in lines)


def test_track_logs_lines_and_a_summary(caplog, monkeypatch) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    with caplog.at_level(logging.INFO, logger="llvq"):
        assert list(track(range(5), "encoding", every=0)) == list(range(5))
    msgs = [r.getMessage() for r in caplog.records if r.name == "llvq"]
    assert msgs[0].startswith("encoding: 1/5 (20%)") and msgs[-1].startswith("encoding: 5 done")


def test_formatting() -> None:
    assert format_duration(9) == "9s" and format_duration(252) == "4m12s"
    assert format_duration(3 * 3600 + 300) == "3h05m"
    assert progress_line("x", 2, None, 1.0) == "x: 2, 2 it/s, 1s elapsed"


def test_train_py_redirected_prints_progress(tmp_path) -> None:
    """`python train.py > file`: the log file shows step lines before the end of training."""
    out = subprocess.run(
        [sys.executable, "train.py", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
         "trainer.limit_val_batches=1", "data.train_samples=96", "data.val_samples=32",
         "logger=csv", f"paths.log_dir={tmp_path}", "~callbacks.reconstruction_grid",
         "~callbacks.lattice_view"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "LLVQ_PROGRESS_EVERY": "0"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "epoch 0/1 step 1/3 (33%)" in out.stdout, out.stdout[-2000:]
    assert "training done in" in out.stdout

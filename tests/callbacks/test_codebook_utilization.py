"""CodebookUtilization in a real Trainer: hand-made counts, DDP reduction, resume, skipping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from llvq.callbacks import CodebookUtilization, LatticeView
from llvq.quantizers import build
from tests.callbacks._fake import CodesModel, hand_made_latents, loaders, unit_lattice
from tests.conftest import ROOT

EXPECTED = {"distinct": 5.0, "entropy_bits": 2.0, "perplexity": 4.0}


def _trainer(callbacks: list, max_epochs: int = 1, **kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, limit_train_batches=1,
                     num_sanity_val_steps=0, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=callbacks,
                     **{"logger": False, "enable_checkpointing": False, **kw})


def test_counts_match_hand_made_codes() -> None:
    cb = CodebookUtilization()
    trainer = _trainer([cb])
    trainer.fit(CodesModel(unit_lattice(2)), *loaders(hand_made_latents()))
    (entry,) = cb.history
    for key, value in EXPECTED.items():
        assert entry[key] == pytest.approx(value), key
    assert float(trainer.callback_metrics["val/codebook/distinct"]) == 5.0


def test_finite_codebook_reports_dead_codes() -> None:
    q = build("vq", dim=2, codebook_size=4)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]))
    x = torch.zeros(4, 2, 2, 2)
    x[1::2, 0] = 9.0  # odd samples sit at codeword 1: codewords 2 and 3 stay dead
    cb = CodebookUtilization()
    _trainer([cb]).fit(CodesModel(q), *loaders(x))
    entry = cb.history[0]
    assert entry["distinct"] == 2 and entry["dead_fraction"] == pytest.approx(0.5)
    assert entry["entropy_bits"] == pytest.approx(1.0)


def test_measure_over_a_whole_dataset() -> None:
    stats = CodebookUtilization.measure(CodesModel(unit_lattice(2)), loaders(hand_made_latents())[1])
    assert stats["vectors"] == 32
    for key, value in EXPECTED.items():
        assert stats[key] == pytest.approx(value)


def test_identity_is_skipped_with_a_log(caplog) -> None:
    cb = CodebookUtilization()
    view = LatticeView()
    with caplog.at_level("INFO", logger="llvq"):
        _trainer([cb, view]).fit(CodesModel(build("identity", dim=2)), *loaders(hand_made_latents()))
    assert cb.history == [] and view.basis_history == []
    assert "CodebookUtilization" in caplog.text and "LatticeView" in caplog.text
    with pytest.raises(ValueError, match="no integer codes"):
        CodebookUtilization.measure(CodesModel(build("identity", dim=2)), [])


def test_state_survives_resume(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    cb, view = CodebookUtilization(), LatticeView()
    _trainer([cb, view, ckpt], enable_checkpointing=True).fit(
        CodesModel(unit_lattice(2)), *loaders(hand_made_latents()))
    assert len(cb.history) == 1 and len(view.basis_history) == 1

    cb2, view2 = CodebookUtilization(), LatticeView()
    _trainer([cb2, view2, ModelCheckpoint(dirpath=tmp_path / "2", save_last=True)],
             max_epochs=2, enable_checkpointing=True).fit(
        CodesModel(unit_lattice(2)), *loaders(hand_made_latents()),
        ckpt_path=str(tmp_path / "last.ckpt"))
    assert [h["epoch"] for h in cb2.history] == [0.0, 1.0]
    assert cb2.history[0] == cb.history[0]
    assert view2.epochs == [0, 1]
    torch.testing.assert_close(view2.basis_history[0], torch.ones(2))
    state = torch.load(tmp_path / "2" / "last.ckpt", weights_only=True)["callbacks"]
    assert any(len(s.get("history", [])) == 2 for s in state.values())


@pytest.mark.slow  # ~20 s: two processes
def test_ddp_counts_are_reduced_across_two_processes(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    script = ROOT / "tests" / "callbacks" / "_ddp_utilization.py"
    for attempt in range(2):  # one retry: a gloo rendezvous can lose its port to another process
        proc = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env,
                              check=False, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            break
        warnings.warn(f"2-process DDP run failed (attempt {attempt + 1}):\n"
                      f"{(proc.stdout + proc.stderr)[-2000:]}", stacklevel=1)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for rank in (0, 1):
        (entry,) = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for key, value in EXPECTED.items():
            assert entry[key] == pytest.approx(value), (rank, key)

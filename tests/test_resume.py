"""Exact resume after a kill: subprocess runs of ``train.py`` killed at a random step.

A run killed with SIGKILL at a random step and resumed from its newest checkpoint
(``last.ckpt``) ends with weights ``torch.equal`` to the uninterrupted run's, for the
autoencoder and for the prior (whose dropout makes the random-generator states matter).
SIGTERM / SIGINT save, print the resume command and exit 143 / 130. Runs are tiny: 2 epochs of
8 steps, a checkpoint every 3 steps, CPU.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

QUIET = ["logger=csv", "~callbacks.rich_progress_bar", "~callbacks.model_summary",
         "trainer.max_epochs=2", "callbacks.resume_checkpoint.every_n_steps=3"]
AE = ["data.train_samples=64", "data.batch_size=8", "data.image_size=16", "data.val_samples=8",
      "data.short_side=64", "data.train_images=[astronaut,coins]", "data.val_images=[camera]",
      "model.latent_dim=8", "model.encoder.channels=[8]", "model.encoder.num_residual=1",
      "~callbacks.lattice_view", "~callbacks.reconstruction_grid",
      "~callbacks.codebook_utilization"]
PRIOR = ["experiment=prior", "data.batch_size=4", "model.d_model=16", "model.num_layers=1",
         "model.num_heads=2"]  # 29 training sequences: 8 steps per epoch
STEPS = 16


def train(tmp: Path, name: str, *overrides: str) -> subprocess.CompletedProcess:
    """``python train.py`` into ``tmp/name`` (the run folder), killed or not."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), *QUIET, *overrides,
           f"paths.log_dir={tmp / 'logs'}", f"hydra.run.dir={tmp / name}"]
    return subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == STEPS
    return ckpt["state_dict"]


def assert_same_weights(a: dict, b: dict, note: str) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{note}: tensors differ after resume: {differ}"


def kill_and_resume(tmp: Path, job: list[str], reference: dict, signum: int) -> str:
    step = random.Random().randrange(4, STEPS)  # after the first checkpoint (step 3)
    note = f"killed with {signal.Signals(signum).name} before step {step + 1}"
    killed = train(tmp, "killed", *job, "+callbacks.kill._target_=tests._faults.KillAt",
                   f"+callbacks.kill.step={step}", f"+callbacks.kill.signum={signum}")
    assert killed.returncode in (-signum, 128 + signum), killed.stderr[-3000:]
    last = tmp / "killed" / "checkpoints" / "last.ckpt"
    resumed = train(tmp, "resumed", *job, f"ckpt_path={last}")
    assert resumed.returncode == 0, f"{note}\n{resumed.stderr[-3000:]}"
    assert_same_weights(reference, weights(tmp / "resumed" / "checkpoints" / "last.ckpt"), note)
    return killed.stdout + killed.stderr


@pytest.fixture(scope="module")
def ae_reference(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ae_ref")
    proc = train(tmp, "full", *AE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return weights(tmp / "full" / "checkpoints" / "last.ckpt")


def test_autoencoder_sigkill_at_a_random_step_resumes_exactly(ae_reference, tmp_path) -> None:
    kill_and_resume(tmp_path, AE, ae_reference, int(signal.SIGKILL))


@pytest.mark.slow  # the in-process SIGTERM / SIGINT tests are in test_reliability.py
def test_sigterm_saves_prints_the_resume_command_and_exits_143(ae_reference, tmp_path) -> None:
    out = kill_and_resume(tmp_path, AE, ae_reference, int(signal.SIGTERM))
    assert "SIGTERM: saved" in out and "ckpt_path=" in out and "resume with" in out


@pytest.mark.slow  # ~30 s; the autoencoder case runs by default
def test_prior_sigkill_at_a_random_step_resumes_exactly(tmp_path) -> None:
    from tests.callbacks._fake import write_tiny_export

    job = [*PRIOR, f"data.path={write_tiny_export(tmp_path / 'export')}"]
    full = train(tmp_path, "full", *job)
    assert full.returncode == 0, full.stderr[-3000:]
    reference = weights(tmp_path / "full" / "checkpoints" / "last.ckpt")
    kill_and_resume(tmp_path, job, reference, int(signal.SIGKILL))

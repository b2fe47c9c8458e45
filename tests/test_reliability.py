"""Trustworthy runs, in process: failed saves, SIGTERM / SIGINT, explicit resume, bad ckpt_path.

The subprocess SIGKILL tests (exact resume at a random step) are in ``test_resume.py``; the
guarantees and the tests that hold each are listed in ``docs/reliability.md``. Every run here
is the tiny digits autoencoder: a few steps, about two seconds.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

import llvq.checkpoints
from llvq.checkpoints import CheckpointWriteError, atomic_write, read_checkpoint
from llvq.runner import run
from tests._faults import KillAt, failing_open
from tests.conftest import ROOT, compose_train

TINY = ["data=digits", "model.encoder.channels=[8]", "model.encoder.num_residual=1",
        "model.latent_dim=8", "logger=csv", "callbacks=resume_checkpoint",
        "callbacks.resume_checkpoint.every_n_steps=2", "trainer.limit_val_batches=1",
        "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false"]


def tiny(tmp: Path, *overrides: str, out: Path | None = None):
    cfg = compose_train([*TINY, *overrides], tmp)
    if out is not None:
        cfg.paths.output_dir = str(out)
    return cfg


def step_of(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


# --- a checkpoint that cannot be written ------------------------------------------------------
def test_failed_save_keeps_the_previous_checkpoint_and_raises_naming_it(tmp_path, monkeypatch):
    """The second save (step 4) fails half-way, as on a full disk: the run raises naming the
    path, ``last.ckpt`` still holds step 2 and loads, and no temporary file is left."""
    opened: list[str] = []
    monkeypatch.setattr(llvq.checkpoints, "open", failing_open(1, opened), raising=False)
    cfg = tiny(tmp_path, "trainer.max_steps=6")
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointWriteError, match=f"could not write checkpoint {last}") as err:
        run(cfg)
    assert "No space left on device" in str(err.value)
    assert len(opened) == 2  # the save at step 2 succeeded, the one at step 4 failed half-way
    assert step_of(last) == 2
    assert read_checkpoint(last)["state_dict"]
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]


def test_unwritable_folder_raises_and_leaves_the_old_file(tmp_path, monkeypatch):
    """A read-only folder (simulated: root ignores chmod) raises naming the path; the file
    there is untouched."""
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous")

    def denied(file, mode="r", *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(llvq.checkpoints, "open", denied, raising=False)
    with pytest.raises(CheckpointWriteError, match=f"{target}: Permission denied"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_train_py_exits_non_zero_when_a_save_fails(tmp_path) -> None:
    """Not exit 0 with a missing checkpoint (Lightning's own save swallowed the error)."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "train.py", *TINY, "trainer.max_steps=4",
         "+callbacks.fail._target_=tests._faults.FailSavesAfter", "+callbacks.fail.after=1",
         f"paths.log_dir={tmp_path / 'logs'}", f"hydra.run.dir={run_dir}"],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert f"could not write checkpoint {last}" in proc.stderr, proc.stderr[-3000:]
    assert step_of(last) == 2


# --- SIGTERM / SIGINT -------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_prints_the_resume_command_and_exits(signum, tmp_path, monkeypatch,
                                                          caplog) -> None:
    """SIGTERM / SIGINT during step 3: the step finishes, ``last.ckpt`` holds step 3, the
    resume command is logged and the run exits with 128 + signal (143 / 130); the handlers are
    given back afterwards."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    cfg = tiny(tmp_path, "trainer.max_steps=8", "callbacks.resume_checkpoint.every_n_steps=100",
               "+callbacks.kill._target_=tests._faults.KillAt", "+callbacks.kill.step=2",
               f"+callbacks.kill.signum={int(signum)}")
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    with caplog.at_level(logging.INFO, logger="llvq"), pytest.raises(SystemExit) as exit_:
        run(cfg)
    assert exit_.value.code == 128 + int(signum) == (143 if signum == signal.SIGTERM else 130)
    assert step_of(last) == 3
    text = caplog.text
    assert f"{signum.name}: saved {last} at step 3" in text
    assert f"ckpt_path={last}" in text and "python train.py" in text
    assert {s: signal.getsignal(s) for s in before} == before
    # the saved checkpoint resumes to the end
    resumed = tiny(tmp_path / "resumed", "trainer.max_steps=8", f"ckpt_path={last}")
    run(resumed)
    assert step_of(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt") == 8


def test_sigterm_during_validation_saves_at_the_epoch_end_and_exits_143(tmp_path, caplog):
    """Lightning's own SIGTERM handling would stop the validation with exit code 0 and no
    checkpoint; the validation finishes, the epoch-end state is saved, the exit code is 143."""
    cfg = tiny(tmp_path, "trainer.max_epochs=3", "trainer.limit_train_batches=3",
               "trainer.limit_val_batches=2", "callbacks.resume_checkpoint.every_n_steps=100",
               "+callbacks.kill._target_=tests._faults.SignalInValidation")
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    with caplog.at_level(logging.INFO, logger="llvq"), pytest.raises(SystemExit) as exit_:
        run(cfg)
    assert exit_.value.code == 143
    assert step_of(last) == 3 and "SIGTERM: saved" in caplog.text
    resumed = tiny(tmp_path / "resumed", "trainer.max_epochs=3", "trainer.limit_train_batches=3",
                   "callbacks.resume_checkpoint.every_n_steps=1", f"ckpt_path={last}")
    run(resumed)
    assert step_of(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt") == 9


def test_kill_at_is_a_real_fault() -> None:
    """The helper the signal tests rely on sends the signal it is given at the step it is given."""
    got: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
    try:
        trainer = type("T", (), {"global_step": 5})()
        KillAt(4, int(signal.SIGUSR1)).on_train_batch_start(trainer)
        assert got == []
        KillAt(5, int(signal.SIGUSR1)).on_train_batch_start(trainer)
        assert got == [int(signal.SIGUSR1)]
    finally:
        signal.signal(signal.SIGUSR1, previous)


# --- explicit resume only ---------------------------------------------------------------------
def test_ckpt_path_null_refuses_a_run_folder_holding_checkpoints(tmp_path) -> None:
    cfg = tiny(tmp_path, "trainer.max_steps=2")
    held = Path(cfg.paths.output_dir) / "checkpoints"
    held.mkdir(parents=True)
    (held / "last.ckpt").write_bytes(b"x")
    with pytest.raises(FileExistsError, match=r"already holds checkpoints \(last.ckpt\).*"
                                              r"ckpt_path="):
        run(cfg)
    assert (held / "last.ckpt").read_bytes() == b"x"


def test_ckpt_path_last_resumes_the_newest_last_ckpt_of_the_same_task(tmp_path, caplog) -> None:
    runs = tmp_path / "logs" / "train" / "runs"
    first = tiny(tmp_path, "trainer.max_steps=2", out=runs / "a")
    run(first)
    older = tiny(tmp_path, "trainer.max_steps=4", out=runs / "b")
    run(older)
    a, b = runs / "a" / "checkpoints" / "last.ckpt", runs / "b" / "checkpoints" / "last.ckpt"
    now = time.time()
    os.utime(b, (now - 100, now - 100))  # a is the newest of task `train`
    os.utime(a, (now, now))
    other = tmp_path / "logs" / "other" / "runs" / "x" / "checkpoints"
    other.mkdir(parents=True)
    (other / "last.ckpt").write_bytes(b"not this task")
    os.utime(other / "last.ckpt", (now + 100, now + 100))

    cfg = tiny(tmp_path, "trainer.max_steps=4", "ckpt_path=last", out=runs / "c")
    with caplog.at_level(logging.INFO, logger="llvq"):
        run(cfg)
    assert f"ckpt_path=last: resuming {a}" in caplog.text
    assert step_of(runs / "c" / "checkpoints" / "last.ckpt") == 4

    none = tiny(tmp_path, "ckpt_path=last", "task_name=never_ran")
    with pytest.raises(FileNotFoundError, match="ckpt_path=last: no .*never_ran"):
        run(none)


def _save_module_ckpt(cfg, path: Path) -> Path:
    model = instantiate(cfg.model)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "global_step": 0}, path)
    return path


def test_resume_with_other_settings_lists_the_differences(tmp_path) -> None:
    saved = _save_module_ckpt(tiny(tmp_path), tmp_path / "saved.ckpt")
    cfg = tiny(tmp_path, "model.latent_dim=4", "model/quantizer=vq", f"ckpt_path={saved}")
    with pytest.raises(ValueError) as err:
        run(cfg)
    text = str(err.value)
    assert "was saved with other model settings" in text
    assert "model.latent_dim: checkpoint 8, now 4" in text
    assert "model.quantizer.name: checkpoint \"llvq\", now \"vq\"" in text
    assert "state_dict" not in text and "size mismatch" not in text
    assert text.count("\n  ") == len(text.split("Differences:")[1].strip().splitlines())


def test_ckpt_path_directory_or_other_file_is_a_clear_error(tmp_path) -> None:
    run_dir = tmp_path / "old_run"
    (run_dir / "checkpoints").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match=r"ckpt_path=.*old_run.* is a directory; pass "
                                                r"a \.ckpt file in it, e\.g\. .*last\.ckpt"):
        run(tiny(tmp_path, f"ckpt_path={run_dir}"))

    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match=r"ckpt_path=.*notes\.ckpt.* is not a readable "
                                         r"checkpoint"):
        run(tiny(tmp_path, f"ckpt_path={text}"))

    truncated = tmp_path / "truncated.ckpt"
    whole = _save_module_ckpt(tiny(tmp_path), tmp_path / "whole.ckpt").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"truncated\.ckpt.* is not a readable checkpoint"):
        run(tiny(tmp_path, f"ckpt_path={truncated}"))

    other = tmp_path / "tensors.ckpt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match=r"tensors\.ckpt.* is not a Lightning checkpoint"):
        run(tiny(tmp_path, f"ckpt_path={other}"))

    with pytest.raises(FileNotFoundError, match=r"ckpt_path=.*missing\.ckpt.* does not exist"):
        run(tiny(tmp_path, f"ckpt_path={tmp_path / 'missing.ckpt'}"))

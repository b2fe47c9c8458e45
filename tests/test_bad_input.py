"""Bad input: one clear error naming the setting, and ``train.py`` prints it as one line.

The table of bad inputs and their messages is in ``docs/reliability.md``; the ``ckpt_path``
cases (a directory, a file that is not a checkpoint) are in ``test_reliability.py``, the
damaged export manifests in ``test_export.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from PIL import Image

import llvq.data.photos
from llvq.cli import deliberate, one_line_errors
from llvq.data.image_folder import ImageFiles
from llvq.data.images import PILToSquareTensor
from llvq.export import load_autoencoder
from llvq.export import main as export_main
from llvq.llm.settings import PTQConfig
from llvq.runner import run
from tests.conftest import ROOT

FAST = ["++trainer.fast_dev_run=true", "callbacks=none", "logger=csv", "data=digits"]


@pytest.mark.parametrize("overrides, match", [
    (["model.latent_dim=-1"], r"model\.latent_dim must be a positive integer, got -1"),
    (["model.latent_dim=0"], r"model\.latent_dim must be a positive integer, got 0"),
    (["seed=abc"], r"seed must be a non-negative integer or null, got 'abc'"),
    (["model.lr=abc"], r"model\.lr must be a number > 0, got 'abc'"),
    (["model/quantizer=glvq", "model.quantizer.bits=0"], r"'glvq': `bits` must be integers"),
    (["model/quantizer=glvq", "model.quantizer.bits=17"], r"`bits` must be integers in \[1, 16\]"),
    (["model.quantizer.beta=-1"], r"'llvq': `beta` must be .* \(model\.quantizer\.beta\)"),
    (["model/quantizer=vq_ema", "model.quantizer.beta=-0.5"], r"'vq_ema': `beta` must be"),
    (["experiment=olala_digits", "model.num_clients=0"],
     r"model\.num_clients must be a positive integer, got 0"),
])
def test_bad_setting_is_one_clear_error(overrides, match, compose_cfg) -> None:
    with pytest.raises(ValueError, match=match):
        run(compose_cfg(*FAST, *overrides))


def test_limit_train_batches_zero_trains_nothing_and_says_so(compose_cfg) -> None:
    cfg = compose_cfg("callbacks=none", "logger=csv", "data=digits", "trainer.max_steps=1",
                      "trainer.limit_train_batches=0")
    with pytest.raises(ValueError, match=r"trainer\.limit_train_batches=0 trains nothing"):
        run(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_trainer_gpu_without_a_gpu_says_so(compose_cfg) -> None:
    with pytest.raises(ValueError, match=r"trainer\.accelerator=gpu .*no CUDA GPU is visible"):
        run(compose_cfg(*FAST, "trainer=gpu"))


@pytest.mark.parametrize("bits", [0, 0.5, 9.5, float("inf"), "abc"])
def test_llm_ptq_bits_out_of_range(bits) -> None:
    with pytest.raises(ValueError, match=r"model\.bits must be a number"):
        PTQConfig(bits=bits)
    assert PTQConfig(bits=9).bits == 9.0


def _truncated_png(path: Path) -> Path:
    Image.new("RGB", (64, 64), (200, 10, 10)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_image_file_is_named(tmp_path: Path) -> None:
    bad = _truncated_png(tmp_path / "broken.png")
    files = ImageFiles([bad], [-1], PILToSquareTensor(3, 16))
    with pytest.raises(ValueError, match=rf"image file {bad} is truncated or damaged"):
        files[0]


def test_damaged_photograph_is_named(tmp_path: Path, monkeypatch) -> None:
    import numpy as np

    bad = _truncated_png(tmp_path / "astronaut.png")

    def read() -> np.ndarray:
        with Image.open(bad) as image:
            return np.asarray(image.convert("RGB"))

    monkeypatch.setitem(llvq.data.photos.PHOTOGRAPHS, "astronaut", read)
    with pytest.raises(ValueError, match=r"photograph 'astronaut' \(data\.train_images / "
                                         r"data\.val_images\) could not be decoded.*reinstall"):
        llvq.data.photos.load_photograph("astronaut", 3, 32)


def _other_job_checkpoint(path: Path) -> Path:
    """A checkpoint of the prior (hyper-parameters of another module)."""
    torch.save({"state_dict": {"w": torch.zeros(1)}, "global_step": 0,
                "hyper_parameters": {"export_dir": "x", "d_model": 16, "num_layers": 1,
                                     "lr": 3e-4}}, path)
    return path


def test_export_of_a_non_autoencoder_checkpoint_is_refused(tmp_path: Path, capsys) -> None:
    ckpt = _other_job_checkpoint(tmp_path / "prior.ckpt")
    with pytest.raises(ValueError, match=r"prior\.ckpt is not an autoencoder checkpoint: its "
                                         r"model settings are d_model, export_dir"):
        load_autoencoder(ckpt)
    with pytest.raises(SystemExit) as exit_:
        export_main([str(ckpt), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("llvq-export: error: ") and "not an autoencoder checkpoint" in err
    assert len(err.splitlines()) == 1


def test_export_of_a_folder_or_a_junk_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(IsADirectoryError, match=r"checkpoint=.*run.* is a directory"):
        load_autoencoder(tmp_path / "run")
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.ckpt.* is not a readable checkpoint"):
        load_autoencoder(junk)


# --- how train.py prints them -----------------------------------------------------------------
def _raise_llvq_error() -> None:
    from llvq.modules._build import positive_int

    positive_int(0, "model.latent_dim")


def test_an_error_llvq_raises_on_purpose_is_one_line(capsys, monkeypatch) -> None:
    monkeypatch.delenv("LLVQ_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_, one_line_errors():
        _raise_llvq_error()
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "error: model.latent_dim must be a positive integer, got 0\n"

    try:  # Hydra's wrapper is unwrapped to the cause
        _raise_llvq_error()
    except ValueError as cause:
        wrapped = InstantiationException("Error in call to target 'x'")
        wrapped.__cause__ = cause
    with pytest.raises(SystemExit), one_line_errors():
        raise wrapped
    assert capsys.readouterr().err.startswith("error: model.latent_dim")


def test_bugs_signals_and_llvq_traceback_keep_their_behaviour(monkeypatch) -> None:
    monkeypatch.delenv("LLVQ_TRACEBACK", raising=False)
    with pytest.raises(ValueError, match="invalid literal"), one_line_errors():
        int("x")  # raised by Python, not by a check of llvq: a bug keeps its traceback
    with pytest.raises(ZeroDivisionError), one_line_errors():
        _ = 1 / 0
    with pytest.raises(SystemExit) as exit_, one_line_errors():
        raise SystemExit(143)  # what ResumeCheckpoint raises after SIGTERM
    assert exit_.value.code == 143
    monkeypatch.setenv("LLVQ_TRACEBACK", "1")
    with pytest.raises(ValueError, match="model.latent_dim"), one_line_errors():
        _raise_llvq_error()


def test_deliberate_means_a_raise_statement_in_llvq() -> None:
    try:
        _raise_llvq_error()
    except ValueError as err:
        assert deliberate(err)
    try:
        torch.zeros(2) @ torch.zeros(3)
    except RuntimeError as err:
        assert not deliberate(err)


def test_train_py_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    """No Hydra or torch traceback for a bad setting; ``LLVQ_TRACEBACK=1`` brings it back."""
    cmd = [sys.executable, "train.py", "model.latent_dim=-1", *FAST,
           f"paths.log_dir={tmp_path / 'logs'}", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {k: v for k, v in os.environ.items() if k != "LLVQ_TRACEBACK"}
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env={**env, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == \
        "error: model.latent_dim must be a positive integer, got -1", proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr

"""End to end through `run(cfg)`: every experiment, every quantizer, resume, DDP, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from llvq.quantizers import list_quantizers
from llvq.runner import run
from tests.conftest import CONFIG_DIR, ROOT

# experiments that load a real language model (~35 s for SmolLM2 from GGUF) run with -m slow
SLOW_EXPERIMENTS = {"glvq_smollm2", "kv_cache_smollm2"}
EXPERIMENTS = [pytest.param(p.stem, marks=pytest.mark.slow) if p.stem in SLOW_EXPERIMENTS
               else p.stem for p in sorted((CONFIG_DIR / "experiment").glob("*.yaml"))]
FAST = ["++trainer.fast_dev_run=true", "callbacks=none", "logger=csv"]


def _prior_inputs(tmp_path: Path) -> list[str]:
    from tests.callbacks._fake import write_tiny_export

    return [f"data.path={write_tiny_export(tmp_path / 'export')}"]


# experiments that need inputs made by an earlier job (an export for the prior)
NEEDS = {"prior": _prior_inputs, "qat_prior": _prior_inputs}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_fast_dev_run(experiment: str, compose_cfg, tmp_path: Path) -> None:
    extra = NEEDS[experiment](tmp_path) if experiment in NEEDS else []
    cfg = compose_cfg(f"experiment={experiment}", "++trainer.fast_dev_run=true", *extra)
    metrics = run(cfg)
    assert metrics, f"experiment {experiment} logged nothing"


def test_default_config_fast_dev_run(compose_cfg) -> None:
    metrics = run(compose_cfg("++trainer.fast_dev_run=true"))
    assert "train/recon_mse" in metrics and "val/recon_mse" in metrics


@pytest.mark.parametrize("name", list_quantizers())
def test_autoencoder_trains_with_every_quantizer(name: str, compose_cfg) -> None:
    cfg = compose_cfg(f"model/quantizer={name}", "data.train_samples=64", "data.val_samples=32", *FAST)
    metrics = run(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_resume_continues_step_count(compose_cfg, tmp_path: Path) -> None:
    common = ["trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "logger=csv",
              "callbacks=default", "~callbacks.rich_progress_bar", "~callbacks.model_summary"]
    cfg = compose_cfg("trainer.max_epochs=1", *common)
    run(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert torch.load(last, weights_only=False)["global_step"] == 3
    cfg2 = compose_cfg("trainer.max_epochs=2", f"ckpt_path={last}", *common)
    cfg2.paths.output_dir = str(tmp_path / "resumed")  # a resumed run gets its own run folder
    run(cfg2)
    state = torch.load(Path(cfg2.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 6 and state["epoch"] == 1


class _CrashAt(L.Callback):
    """Raises inside the training loop after ``step`` optimizer steps (a simulated crash)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_crash_mid_epoch_leaves_a_checkpoint_to_resume(compose_cfg, tmp_path: Path) -> None:
    common = ["trainer.max_epochs=1", "trainer.limit_train_batches=6", "trainer.limit_val_batches=1",
              "logger=csv", "~callbacks.rich_progress_bar", "~callbacks.model_summary"]
    # the periodic checkpoint (every 3 steps) is what a crash at step 4 leaves behind
    cfg = compose_cfg(*common, "callbacks.resume_checkpoint.every_n_steps=3",
                      "+callbacks.crash._target_=tests.test_train._CrashAt",
                      "+callbacks.crash.step=4")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg)
    saved = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(saved, weights_only=False)["global_step"] == 3
    cfg2 = compose_cfg(*common, f"ckpt_path={saved}")
    cfg2.paths.output_dir = str(tmp_path / "resumed")
    run(cfg2)
    state = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 6


def test_ddp_cpu_two_processes_under_hydra(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), "trainer=ddp_cpu", "++trainer.fast_dev_run=true",
           "callbacks=none", "logger=csv", f"paths.log_dir={tmp_path}",
           f"paths.data_dir={ROOT / 'data'}"]
    proc = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "[rank 0/2] finished" in output and "[rank 1/2] finished" in output, output[-3000:]


@pytest.mark.parametrize("overrides, error, match", [
    (["model.quantizer.name=nope"], ValueError, "known quantizers"),
    (["model.quantizer.codebook_size=1"], ValueError, "codebook_size"),
    (["model.quantizer.dim=32"], ValueError, "dim=32"),
    (["model.lr=0"], ValueError, "model.lr"),
    (["ckpt_path=/no/such/file.ckpt"], FileNotFoundError, "ckpt_path"),
    (["data=mnist", "data.download=false"], FileNotFoundError, "data"),
])
def test_bad_input_gives_one_clear_error(overrides, error, match, compose_cfg) -> None:
    cfg = compose_cfg(*overrides, *FAST)
    with pytest.raises(error, match=match):
        run(cfg)


def test_nan_input_reaches_quantizer_error(compose_cfg) -> None:
    from hydra.utils import instantiate

    cfg = compose_cfg(*FAST)
    model = instantiate(cfg.model)
    x = torch.rand(2, 3, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        model(x)

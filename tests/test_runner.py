"""The runner's stages: plugins from the config, test after fit, the metric a sweeper optimises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llvq.plugins import PluginError
from llvq.quantizers import list_quantizers
from llvq.runner import metric_value, run
from tests.conftest import ROOT

FAST = ["++trainer.fast_dev_run=true", "callbacks=none", "logger=csv",
        "data.train_samples=64", "data.val_samples=32"]


def test_test_stage_runs_after_fit(compose_cfg) -> None:
    metrics = run(compose_cfg("test=true", *FAST))
    assert "test/recon_mse" in metrics and "val/recon_mse" in metrics
    assert metric_value(metrics, "test/recon_mse") == metrics["test/recon_mse"]


def test_test_stage_on_the_best_checkpoint(compose_cfg) -> None:
    cfg = compose_cfg("test=true", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
                      "trainer.limit_val_batches=1", "logger=csv", "callbacks=default",
                      "~callbacks.rich_progress_bar", "~callbacks.model_summary",
                      "~callbacks.reconstruction_grid", "~callbacks.lattice_view")
    metrics = run(cfg)
    assert "test/recon_mse" in metrics
    assert any((Path(cfg.paths.output_dir) / "checkpoints").glob("*.ckpt"))


def test_job_without_test_stage_is_refused(compose_cfg) -> None:
    cfg = compose_cfg("experiment=lattice_design", "lattice.dim=2", "test=true",
                      "++trainer.fast_dev_run=true")
    with pytest.raises(ValueError, match="test=false"):
        run(cfg)


def test_missing_optimized_metric_lists_logged_ones() -> None:
    with pytest.raises(KeyError, match="val/recon_mse"):
        metric_value({"val/recon_mse": 1.0}, "val/typo")
    assert metric_value({"a": 1.0}, None) is None


def test_config_plugins_are_imported(compose_cfg, tmp_path: Path, monkeypatch) -> None:
    pkg = tmp_path / "plugin_src"
    pkg.mkdir()
    (pkg / "runner_toy_plugin.py").write_text(
        "from llvq.quantizers import register\n"
        "from llvq.quantizers.identity import IdentityQuantizer\n"
        "@register('runner_toy')\n"
        "class RunnerToy(IdentityQuantizer):\n"
        "    pass\n")
    monkeypatch.syspath_prepend(str(pkg))
    cfg = compose_cfg("plugins=[runner_toy_plugin]", "model/quantizer=identity",
                      "model.quantizer.name=runner_toy", *FAST)
    metrics = run(cfg)
    assert "runner_toy" in list_quantizers() and "train/loss" in metrics


def test_config_plugin_that_fails_is_named(compose_cfg) -> None:
    cfg = compose_cfg("plugins=[no_such_module_xyz]", *FAST)
    with pytest.raises(PluginError, match="no_such_module_xyz"):
        run(cfg)


def test_train_py_sweep_returns_metric(tmp_path: Path) -> None:
    """A two-job grid through train.py -m with the basic sweeper and optimized_metric."""
    out = subprocess.run(
        [sys.executable, "train.py", "-m", "hparams_search=ae_grid", "debug=fdr",
         f"paths.log_dir={tmp_path}",
         "callbacks=none", "logger=csv"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("testing the final weights") == 2, out.stdout[-3000:]

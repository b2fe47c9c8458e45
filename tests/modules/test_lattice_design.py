"""`experiment=lattice_design` through `run(cfg)`: logging, the saved generator, the sweep, errors."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from safetensors import safe_open

from llvq.lattices import load_generator
from llvq.lattices.design import DesignConfig, design_lattice
from llvq.modules import LatticeDesignModule
from llvq.runner import run
from tests.conftest import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[2]

FAST = ["experiment=lattice_design", "callbacks=none", "lattice.eval_samples=5000"]


def test_design_run_logs_nsm_and_saves_generator(compose_cfg) -> None:
    cfg = compose_cfg(*FAST, "lattice.dim=2", "lattice.method=free", "lattice.batch_size=256",
                      "trainer.max_steps=40", "logger=tensorboard")
    metrics = run(cfg)
    assert 0.07 < metrics["train/nsm"] < 0.2
    out = Path(cfg.paths.output_dir)
    path = out / "lattice_dim2_free.safetensors"
    g = load_generator(path)
    assert g.shape == (2, 2) and abs(float(torch.linalg.det(g)) - 1) < 1e-9
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["method"] == "free" and meta["dim"] == "2" and meta["seed"] == "0"
    assert 0.079 < float(meta["nsm"]) < 0.09 and float(meta["se"]) > 0
    assert list((out / "tensorboard").rglob("events.out.tfevents*"))


@pytest.mark.parametrize("method", ["splice", "householder", "matrix_exp"])
def test_fusion_methods_run(method: str, compose_cfg) -> None:
    cfg = compose_cfg(*FAST, "lattice.dim=5", "lattice.parts=[3,2]", f"lattice.method={method}",
                      "++trainer.fast_dev_run=true", "logger=csv")
    run(cfg)
    assert (Path(cfg.paths.output_dir) / f"lattice_dim5_{method}.safetensors").is_file()


def test_splice_run_stops_at_max_steps(compose_cfg) -> None:
    """splice has nothing to learn; its steps must still count, or max_steps never ends the run."""
    cfg = compose_cfg(*FAST, "lattice.dim=4", "lattice.method=splice", "trainer.max_steps=3",
                      "logger=csv")
    run(cfg)
    with safe_open(str(Path(cfg.paths.output_dir) / "lattice_dim4_splice.safetensors"), "pt") as f:
        assert f.metadata()["steps"] == "3"


def test_glue_through_the_trainer(compose_cfg) -> None:
    cfg = compose_cfg(*FAST, "lattice.dim=8", "lattice.parts=[D4,D4]", "lattice.glue=true",
                      "lattice.method=householder", "++trainer.fast_dev_run=true", "logger=csv")
    run(cfg)
    path = Path(cfg.paths.output_dir) / "lattice_dim8_householder.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["glue_index_bits"] == "2"  # D4 + D4 glued to E8
    assert 0.0705 < float(meta["nsm"]) < 0.0735


def test_sweep_config_spans_dims_and_methods() -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=lattice_design_sweep"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    params = cfg.hydra.sweeper.params
    assert params["lattice.dim"] == "range(13,23)"
    assert set(params["lattice.method"].split(",")) == {"splice", "householder", "matrix_exp"}
    assert cfg.model._target_ == "llvq.modules.LatticeDesignModule" and cfg.get("data") is None


@pytest.mark.parametrize("override, match", [
    ("lattice.dim=0", "lattice.dim"),
    ("lattice.method=nope", "lattice.method"),
    ("lattice.parts=[nope,E8]", "unknown seed lattice"),
    ("lattice.batch_size=0", "lattice.batch_size"),
    ("lattice.glue_trials=0", "lattice.glue_trials"),
    ("lattice.glue=true lattice.method=free", "lattice.glue"),  # free needs init=splice to glue
    ("+lattice.lr_decay=0.5", "lattice.lr_decay"),  # an unknown setting is named, not dropped
])
def test_bad_settings_give_one_clear_error(override: str, match: str, compose_cfg) -> None:
    cfg = compose_cfg(*FAST, *override.split(), "++trainer.fast_dev_run=true", "logger=csv")
    with pytest.raises(ValueError, match=match):
        run(cfg)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_lattice_design",
                                                  ROOT / "bench" / "lattice_design.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_lattice_design", module)
    spec.loader.exec_module(module)
    return module


def test_train_py_and_the_bench_design_the_same_lattice(compose_cfg, tmp_path) -> None:
    """One design step for both paths: same seed and settings -> the same generator."""
    row = _bench().bench_dim(dim=4, steps=12, batch=64, lr=2.0, eval_samples=1000, seed=3,
                             methods=("householder",), rebase=True, save=tmp_path / "bench",
                             parts=["A2", "A2"], show=False)
    cfg = compose_cfg(*FAST, "lattice.dim=4", "lattice.method=householder", "lattice.parts=[A2,A2]",
                      "lattice.batch_size=64", "lattice.lr=2.0", "lattice.anneal=6",
                      "lattice.rebase=true", "lattice.seed=3", "lattice.eval_samples=1000",
                      "trainer.max_steps=12", "logger=csv")
    run(cfg)
    trained = load_generator(Path(cfg.paths.output_dir) / "lattice_dim4_householder.safetensors")
    benched = load_generator(tmp_path / "bench" / "lattice_dim4_householder.safetensors")
    assert torch.allclose(trained, benched, rtol=0, atol=1e-12)
    with safe_open(str(Path(cfg.paths.output_dir) / "lattice_dim4_householder.safetensors"),
                   "pt") as f:
        assert float(f.metadata()["nsm"]) == pytest.approx(row["householder"], abs=1e-12)


def _trainer(tmp_path: Path, steps: int) -> L.Trainer:
    return L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=tmp_path, accelerator="cpu", devices=1)


def test_free_design_with_reductions_matches_design_lattice(tmp_path) -> None:
    config = DesignConfig(3, "free", batch_size=128, lr=1.0, anneal=10, reduce_every=4, seed=2,
                          eval_samples=1000)
    module = LatticeDesignModule(config, output_dir=str(tmp_path))
    _trainer(tmp_path, 10).fit(module)
    assert torch.equal(module.generator(), design_lattice(config, steps=10).generator)


def test_checkpoint_rebuilds_the_module(tmp_path) -> None:
    module = LatticeDesignModule({"dim": 4, "method": "matrix_exp", "parts": [2, 2], "seed": 1,
                                  "eval_samples": 1000}, output_dir=str(tmp_path))
    trainer = _trainer(tmp_path, 3)
    trainer.fit(module)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = LatticeDesignModule.load_from_checkpoint(tmp_path / "last.ckpt")
    assert loaded.config == module.config and loaded.config.parts == [2, 2]
    assert torch.equal(loaded.generator(), module.generator())


def test_no_fake_parameters_and_splice_has_no_optimizer() -> None:
    splice = LatticeDesignModule({"dim": 4, "method": "splice", "parts": [2, 2]})
    assert list(splice.parameters()) == [] and splice.configure_optimizers() == []
    fused = LatticeDesignModule({"dim": 4, "method": "householder", "parts": [2, 2]})
    assert isinstance(fused.configure_optimizers(), torch.optim.SGD)
    with pytest.raises(ValueError, match="lattice.lr_typo"):
        LatticeDesignModule({"dim": 4, "lr_typo": 1.0})

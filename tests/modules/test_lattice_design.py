"""`experiment=lattice_design` through `run(cfg)`: logging, the saved generator, the sweep, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from safetensors import safe_open

from llvq.lattices import load_generator
from llvq.runner import run
from tests.conftest import CONFIG_DIR

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
])
def test_bad_settings_give_one_clear_error(override: str, match: str, compose_cfg) -> None:
    cfg = compose_cfg(*FAST, *override.split(), "++trainer.fast_dev_run=true", "logger=csv")
    with pytest.raises(ValueError, match=match):
        run(cfg)

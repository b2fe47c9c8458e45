"""Shared fixtures: compose the real Hydra config the way `train.py` does."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"


def compose_train(overrides: list[str], tmp_path: Path) -> DictConfig:
    """Compose ``configs/train.yaml`` with ``overrides``, writing everything under ``tmp_path``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "out")
            cfg.paths.log_dir = str(tmp_path / "logs")
            cfg.paths.data_dir = str(ROOT / "data")
            del cfg.hydra
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture
def compose_cfg(tmp_path):
    def _compose(*overrides: str) -> DictConfig:
        return compose_train(list(overrides), tmp_path)

    return _compose


@pytest.fixture
def fresh_kernel(tmp_path, monkeypatch):
    """``fresh_kernel(module, cell, compiler=True)``: forget ``module.<cell>`` (a compiled C
    kernel's cache), build into ``tmp_path``, ignore ``LLVQ_NO_CKERNEL``; ``compiler=False``
    also hides ``cc`` (an empty ``PATH``). Returns ``tmp_path``."""

    def fresh(module, cell: str, compiler: bool = True) -> Path:
        monkeypatch.setattr(module, cell, [])
        monkeypatch.setenv("LLVQ_CACHE", str(tmp_path))
        monkeypatch.delenv("LLVQ_NO_CKERNEL", raising=False)
        if not compiler:
            monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        return tmp_path

    return fresh

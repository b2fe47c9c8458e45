"""The console script finds the configs wherever it is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from llvq.cli import config_dir
from tests.conftest import CONFIG_DIR


def test_config_dir_from_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLVQ_CONFIG_DIR", raising=False)
    assert config_dir() == CONFIG_DIR


def test_config_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "train.yaml").write_text("task_name: x\n")
    monkeypatch.setenv("LLVQ_CONFIG_DIR", str(tmp_path))
    assert config_dir() == tmp_path.resolve()


def test_llvq_run_is_exposed_lazily() -> None:
    import llvq
    from llvq.runner import run

    assert llvq.run is run

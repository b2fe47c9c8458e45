"""Every command the README shows still composes: Hydra overrides of `python train.py` lines
are valid for the current configs, and `llvq-export` / `llvq-sample` lines parse.

Placeholders (`<run>`, `<hub id or dir>`) become dummy values; a multirun value list
(`lattice.dim=17,18`) is composed at its first value, as the sweeper's first job would be.
"""

from __future__ import annotations

import re
import shlex

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tests.conftest import CONFIG_DIR, ROOT

README = (ROOT / "README.md").read_text()


def _commands(prefix: str) -> list[str]:
    found, fence = [], None
    for raw in README.splitlines():
        if raw.startswith("```"):
            fence = None if fence is not None else raw[3:].strip()
            continue
        if fence not in ("bash", ""):
            continue
        line = raw.split("  #")[0].strip()
        if "&&" in line:  # the quick start's install line ends with `&& python train.py`
            line = line.split("&&")[-1].strip()
        if line.startswith(prefix):
            found.append(line)
    for inline in re.findall(r"`([^`]+)`", README):
        if inline.startswith(prefix) and inline not in found:
            found.append(inline)
    return found


def _fill(arg: str) -> str:
    return re.sub(r"<[^>]+>", "x", arg)


TRAIN = _commands("python train.py")
EXPORT = _commands("llvq-export")
SAMPLE = _commands("llvq-sample")


def test_readme_has_commands() -> None:
    assert len(TRAIN) >= 20 and EXPORT and SAMPLE


def _overrides(command: str) -> list[str]:
    args = [a for a in shlex.split(_fill(command))[2:] if a not in ("-m", "--multirun")]
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        if "," in value and not value.startswith(("[", "{")) and "(" not in value:
            value = value.split(",")[0]
        out.append(f"{key}={value}" if _ else arg)
    return out


@pytest.mark.parametrize("command", TRAIN)
def test_train_command_composes(command: str) -> None:
    overrides = _overrides(command)
    if any(o.startswith("hparams_search=ae_optuna") for o in overrides):
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper",
                            reason="hparams_search=ae_optuna needs the `sweep` extra")
    if any(o.startswith("hydra.searchpath=") for o in overrides):
        pytest.skip("composes only with the plugin package's configs (tests/test_plugins.py)")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    assert cfg.model is not None


@pytest.mark.parametrize("command", EXPORT)
def test_export_command_parses(command: str) -> None:
    from llvq.export import build_parser

    build_parser().parse_args(shlex.split(_fill(command))[1:])


@pytest.mark.parametrize("command", SAMPLE)
def test_sample_command_parses(command: str) -> None:
    from llvq.sample import build_parser

    build_parser().parse_args(shlex.split(_fill(command))[1:])

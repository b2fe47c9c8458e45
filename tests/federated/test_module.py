"""FederatedModule: rounds, dropout, rejected payloads, and DDP equivalence through train.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llvq.modules import FederatedModule
from llvq.runner import run
from tests.conftest import ROOT

SMALL = {"model": "linear", "num_clients": 4, "compressor": "lattice", "rate": 2.0, "rounds": 2, "local_steps": 2}


def test_round_averages_answering_clients_and_rejects_bad_payloads() -> None:
    module = FederatedModule(**SMALL)

    def tamper(payload, round_idx, client):
        if client == 0:
            payload.side["zeta"] = torch.tensor(float("inf"))
        return payload

    module.tamper = tamper
    avg, s = module.run_round(0)
    assert s["rejected"] == 1 and s["answered"] == 3 and avg is not None
    assert s["weight"] == sum(module.weights[1:])
    assert s["bits"] == 4 * (2 * 2 * ((650 + 1) // 2) + 32)


def test_a_round_with_no_answer_keeps_the_model(compose_cfg) -> None:
    cfg = compose_cfg("experiment=olala_digits", "++trainer.fast_dev_run=true", "model.model=linear",
                      "model.dropout=0.999", "callbacks=none", "logger=csv")
    metrics = run(cfg)
    assert metrics["round/skipped"] == 1.0 and metrics["clients/answered"] == 0.0
    assert metrics["clients/dropped"] == 10.0


def _final_weights(tmp_path: Path, devices: list[str]) -> dict[str, torch.Tensor]:
    tmp_path.mkdir(parents=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), "experiment=olala_digits", *devices,
           "model.model=linear", "model.rounds=2", "model.local_steps=3", "model.compressor=olala",
           "model.olala_steps=20",
           "model.dropout=0.2", "logger=csv", "callbacks=default", "~callbacks.rich_progress_bar",
           "~callbacks.model_summary", "~callbacks.codebook_utilization", "~callbacks.reconstruction_grid",
           "~callbacks.lattice_view", f"paths.log_dir={tmp_path}", f"paths.output_dir={tmp_path / 'out'}",
           f"paths.data_dir={ROOT / 'data'}"]
    proc = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    state = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 2
    return state["state_dict"]


@pytest.mark.slow  # ~35 s; tests/test_train.py::test_ddp_cpu_two_processes_under_hydra runs DDP by default
def test_two_process_ddp_gives_the_same_global_model(tmp_path: Path) -> None:
    one = _final_weights(tmp_path / "one", [])
    two = _final_weights(tmp_path / "two", ["trainer=ddp_cpu"])
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=1e-6, rtol=1e-5)


def test_fpld_rates_follow_client_sizes_and_are_what_is_sent() -> None:
    module = FederatedModule(**{**SMALL, "allocation": "fpld", "alpha": 0.3})
    numel, blocks = 650, (650 + 1) // 2  # linear 64 -> 10 model, A2 blocks of 2
    order = sorted(range(4), key=lambda u: module.weights[u])
    rates = [module.rates[u] for u in order]
    assert rates == sorted(rates) and len(set(rates)) > 1  # more data, more bits
    assert sum(r * numel for r in module.rates) <= 2.0 * numel * 4  # within the total budget
    _, s = module.run_round(0)
    assert s["bits"] == sum(int(r * 2) * blocks + 32 for r in module.rates)


def test_resumed_run_continues_at_the_next_round(compose_cfg, tmp_path: Path) -> None:
    """4 rounds in one go == 2 rounds, stop, resume from last.ckpt for the other 2."""
    common = ["experiment=olala_digits", "model.model=linear", "model.rounds=4", "model.local_steps=2",
              "model.compressor=olala", "model.olala_steps=10", "logger=csv", "callbacks=default",
              "~callbacks.rich_progress_bar", "~callbacks.model_summary",
              "~callbacks.codebook_utilization", "~callbacks.reconstruction_grid", "~callbacks.lattice_view"]

    def final(cfg) -> dict:
        run(cfg)
        return torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)

    straight = compose_cfg(*common)
    straight.paths.output_dir = str(tmp_path / "straight")
    ref = final(straight)
    stopped = compose_cfg(*common, "trainer.max_epochs=2")
    stopped.paths.output_dir = str(tmp_path / "stopped")
    half = final(stopped)
    assert half["global_step"] == 2
    resumed = compose_cfg(*common, f"ckpt_path={tmp_path / 'stopped' / 'checkpoints' / 'last.ckpt'}")
    resumed.paths.output_dir = str(tmp_path / "resumed")
    state = final(resumed)
    assert state["global_step"] == ref["global_step"] == 4
    for key, value in ref["state_dict"].items():
        torch.testing.assert_close(state["state_dict"][key], value)

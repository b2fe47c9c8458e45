"""Deployment on loopback: a SuperLink and two SuperNodes as subprocesses, 2 rounds of ``lattice``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llvq.federated.flower.deploy import LocalDeployment
from tests.federated.flower._helpers import assert_bit_identical, flower_settings, in_trainer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_superlink_and_two_supernodes_run_two_lattice_rounds(tmp_path: Path) -> None:
    out = tmp_path / "results"
    s = flower_settings(num_clients=2, rounds=2, compressor="lattice", timeout=240.0,
                        output_dir=str(out))
    dep = LocalDeployment(s, tmp_path / "deploy")
    try:
        dep.start()
        done = dep.run(timeout=420)
        history = out / "history.json"
        assert history.is_file(), f"flwr run exited {done.returncode}, no history\n{dep.logs()}"
    finally:
        procs = [p for _, p in dep.procs]
        dep.close()
    assert procs and all(p.poll() is not None for p in procs)  # everything was shut down
    hist = json.loads(history.read_text())
    assert sorted(hist) == ["0", "1"]
    for r in ("0", "1"):
        assert hist[r]["clients/answered"] == 2 and hist[r]["clients/rejected"] == 0
        assert hist[r]["wire/bytes_per_client"] > 0
    # the deployed run's global model is the in-trainer simulator's, bit for bit
    w_ref, _ = in_trainer(2, num_clients=2)
    w = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["weights"]
    assert_bit_identical(w, w_ref)


def test_a_crashing_and_a_corrupting_supernode_are_counted_and_the_round_completes(tmp_path: Path) -> None:
    out = tmp_path / "results"
    s = flower_settings(num_clients=3, rounds=1, compressor="lattice", timeout=240.0,
                        output_dir=str(out), faults={1: "crash", 2: "corrupt"})
    with LocalDeployment(s, tmp_path / "deploy") as dep:
        done = dep.run(timeout=420)
        history = out / "history.json"
        assert history.is_file(), f"flwr run exited {done.returncode}, no history\n{dep.logs()}"
    st = json.loads(history.read_text())["0"]
    assert (st["clients/answered"], st["clients/failed"], st["clients/rejected"],
            st["clients/dropped"]) == (1, 1, 1, 0)
    # only client 0's update was averaged: the in-trainer round whose clients 1 and 2 are rejected
    w_ref, _ = in_trainer(1, reject=(1, 2))
    w = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["weights"]
    assert_bit_identical(w, w_ref)

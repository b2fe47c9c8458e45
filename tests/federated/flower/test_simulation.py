"""Flower's simulation engine (Ray): ``train.py experiment=olala_flower``, and faults in the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llvq.federated.flower.client import client_app
from llvq.federated.flower.local import LocalGrid
from llvq.federated.flower.server import FlowerServer
from llvq.federated.flower.simulation import simulate
from llvq.runner import run
from tests.federated.flower._helpers import assert_bit_identical, flower_settings, in_trainer

pytest.importorskip("ray")



def test_train_py_runs_olala_flower_on_the_simulation_engine(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg("experiment=olala_flower", "model.model=linear", "model.num_clients=2",
                      "model.compressor=lattice", "model.rounds=2", "model.num_cpus=2",
                      "model.timeout=600", "callbacks=none", "logger=csv")
    metrics = run(cfg)
    out = tmp_path / "out" / "flower"
    hist = json.loads((out / "history.json").read_text())
    assert sorted(hist) == ["0", "1"] and all(h["clients/answered"] == 2 for h in hist.values())
    assert metrics["test/acc"] == pytest.approx(hist["1"]["test/acc"]) and metrics["test/acc"] > 0.3
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # Ray actors computed the same updates as the in-trainer simulator: same global model
    w_ref, _ = in_trainer(2, num_clients=2, seed=0)
    w = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["weights"]
    assert_bit_identical(w, w_ref)


@pytest.mark.slow
def test_a_crashing_and_a_corrupting_client_in_the_engine_are_counted_not_averaged() -> None:
    s = flower_settings(rounds=1, num_clients=3, faults={1: "crash", 2: "corrupt"})
    summary = simulate(s, num_cpus=2)
    server = summary["server"]
    st = server.strategy.history[0]
    assert (st["answered"], st["failed"], st["rejected"], st["dropped"]) == (1, 1, 1, 0)
    # the one accepted payload is the in-trainer client 0's, byte for byte ...
    _, streams = in_trainer(1)
    assert server.strategy.payloads[0] == streams[(0, 0)]
    assert server.strategy.payloads[2] != streams[(0, 2)]  # (the corrupted one was sent)
    # ... and the model is what the in-process grid gives with the same faults
    ref = FlowerServer(s)
    w_ref = ref.run(LocalGrid(client_app(s), 3))
    assert_bit_identical(server.final, w_ref)

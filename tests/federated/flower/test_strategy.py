"""CompressedFedAvg and the ClientApp through an in-process grid: equivalence, faults, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llvq.federated.flower.client import client_app
from llvq.federated.flower.local import LocalGrid
from llvq.federated.flower.server import FlowerServer
from llvq.federated.flower.settings import FlowerSettings
from tests.federated.flower._helpers import assert_bit_identical, flower_settings, in_trainer


def _run(s: FlowerSettings) -> tuple[FlowerServer, torch.Tensor]:
    server = FlowerServer(s)
    return server, server.run(LocalGrid(client_app(s), s.num_clients))


@pytest.mark.parametrize("compressor", ["lattice", "olala"])
def test_flower_payloads_and_model_are_bit_identical_to_the_in_trainer_simulator(compressor: str) -> None:
    opts = {"compressor": compressor, "olala_steps": 6} if compressor == "olala" else {}
    w_ref, streams = in_trainer(2, **opts)
    server, w = _run(flower_settings(rounds=2, **opts))
    assert server.strategy.payloads == {u: streams[(1, u)] for u in range(3)}  # round 1's bytes
    assert_bit_identical(w, w_ref)


def test_fpld_budgets_reach_the_clients() -> None:
    from llvq.federated.wire import unpack_payload

    server, _ = _run(flower_settings(rounds=1, allocation="fpld", num_clients=3, alpha=0.3))
    strat = server.strategy
    assert len(set(strat.rates)) > 1, strat.rates  # heterogeneous data sizes -> heterogeneous rates
    order = sorted(range(3), key=lambda u: strat.sizes[u])
    assert [strat.rates[u] for u in order] == sorted(strat.rates)  # more data, more bits
    blocks = (650 + 1) // 2  # linear 64 -> 10 model, A2 blocks of 2
    for u in range(3):  # each client sent at its own budget: R_u L bits per index + zeta
        assert unpack_payload(strat.payloads[u]).bits == int(strat.rates[u] * 2) * blocks + 32


def test_crash_corrupt_and_silent_clients_are_counted_and_never_averaged() -> None:
    s = flower_settings(rounds=1, num_clients=4, timeout=3.0,
                        faults={1: "crash", 2: "corrupt", 3: "silent"})
    server, w = _run(s)
    st = server.strategy.history[0]
    assert (st["answered"], st["failed"], st["rejected"], st["dropped"]) == (1, 1, 1, 1)
    # only client 0's update: the same model as a run where client 0 is the only one answering
    ref = FlowerServer(flower_settings(rounds=1, num_clients=4, timeout=3.0,
                                       faults={1: "crash", 2: "crash", 3: "crash"}))
    w_ref = ref.run(LocalGrid(client_app(ref.s), 4))
    assert_bit_identical(w, w_ref)


def test_round_without_accepted_update_keeps_the_model() -> None:
    s = flower_settings(rounds=1, num_clients=2, faults={0: "corrupt", 1: "crash"})
    server = FlowerServer(s)
    start = torch.nn.utils.parameters_to_vector(server.net.parameters()).detach().clone()
    w = server.run(LocalGrid(client_app(s), 2))
    assert_bit_identical(w, start)
    assert server.rounds[0]["round/skipped"] == 1.0


def test_checkpoints_tensorboard_and_resume(tmp_path: Path) -> None:
    _, w_full = _run(flower_settings(rounds=2))
    out = tmp_path / "run"
    _run(flower_settings(rounds=1, output_dir=str(out)))
    assert (out / "checkpoints" / "round0000.pt").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    hist = json.loads((out / "history.json").read_text())
    assert {"test/acc", "bits/total", "clients/rejected", "clients/dropped"} <= set(hist["0"])
    resumed, w = _run(flower_settings(rounds=2, resume=str(out / "checkpoints" / "last.pt")))
    assert list(resumed.rounds) == [1]
    assert_bit_identical(w, w_full)


def _strategy(compressor: str, **options) -> tuple:
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    from llvq.federated.client import round_seed
    from llvq.federated.flower.settings import make_compressor
    from llvq.federated.flower.strategy import CompressedFedAvg
    from llvq.federated.server import RoundSums
    from llvq.federated.wire import pack_payload

    s = flower_settings(compressor=compressor, num_clients=1, **options)
    strat = CompressedFedAvg(s, 650)
    strat.rates = [2.0]
    strat.compressors = [make_compressor(s, 2.0)]
    h = torch.randn(650, generator=torch.Generator().manual_seed(0)) * 0.01
    payload = strat.compressors[0].compress(h, round_seed(s.seed, 0, 0))

    def receive(p) -> dict[str, float]:
        sums = RoundSums(torch.zeros(650, dtype=torch.float64))
        sums.stats.update(failed=0.0, wire_bytes=0.0, message_bytes=0.0)
        data = pack_payload(p) if not isinstance(p, bytes) else p
        content = RecordDict({"update": ConfigRecord({"payload": data}),
                              "metrics": MetricRecord({"num-examples": 10})})
        strat._receive(sums, content, 0, 0)
        return sums.stats

    return payload, receive


def test_the_strategy_rejects_each_kind_of_bad_payload_and_accepts_a_good_one(caplog) -> None:
    import copy

    payload, receive = _strategy("olala", olala_steps=0)
    assert receive(payload)["answered"] == 1  # the good one
    bad = []  # (payload, what the logged reason says)
    p = copy.deepcopy(payload)
    p.side["generator"] = torch.zeros(2, 2)  # singular generator
    bad.append((p, "singular"))
    p = copy.deepcopy(payload)
    p.side["zeta"] = torch.tensor(float("nan"))  # non-finite side information
    bad.append((p, "non-finite"))
    p = copy.deepcopy(payload)
    p.indices = p.indices.clone()
    p.indices[3] = 31  # outside the 2^(R L) = 16 codewords (the stream then uses 5-bit indices)
    p.bits += p.indices.numel()
    bad.append((p, "outside"))
    p = copy.deepcopy(payload)
    p.numel = 652  # shape: not the model's P
    p.indices = torch.cat([p.indices, p.indices[:1]])
    p.bits += 4
    bad.append((p, "coordinates"))
    p = copy.deepcopy(payload)
    p.kind = "lattice"  # another compressor's payload
    bad.append((p, "kind"))
    for p, why in bad:
        caplog.clear()
        with caplog.at_level("WARNING", logger="llvq"):
            st = receive(p)
        assert (st["answered"], st["rejected"], st["weight"]) == (0, 1, 0), why
        assert why in caplog.text, caplog.text
    st = receive(b"LQ\x01garbage")  # a malformed stream
    assert (st["answered"], st["rejected"]) == (0, 1)

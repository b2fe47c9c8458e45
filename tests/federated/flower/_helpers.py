"""The in-trainer simulator's rounds, run by hand, for comparison with a Flower run."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector

from llvq.federated.flower.settings import FlowerSettings
from llvq.federated.wire import pack_payload
from llvq.modules.federated import FederatedModule

SETTINGS = {"dataset": "digits", "model": "linear", "num_clients": 3, "alpha": 1.0,
            "compressor": "lattice", "rate": 2.0, "local_epochs": 1, "local_lr": 0.1, "seed": 3}


def in_trainer(rounds: int, reject: tuple[int, ...] = (), **overrides: Any
               ) -> tuple[Tensor, dict[tuple[int, int], bytes]]:
    """Final global weights and every payload stream ``(round, client) -> bytes`` of
    FederatedModule; the payloads of the clients in ``reject`` get a NaN scale (rejected)."""
    streams: dict[tuple[int, int], bytes] = {}

    class Recording(FederatedModule):
        def tamper(self, payload: Any, round_idx: int, client: int) -> Any:
            streams[(round_idx, client)] = pack_payload(payload)
            if client in reject:
                payload.side["zeta"] = torch.tensor(float("nan"))
            return payload

    m = Recording(**{**SETTINGS, **overrides}, rounds=rounds)
    for r in range(rounds):
        avg, _ = m.run_round(r)
        m.apply_update(avg)
    return parameters_to_vector(m.net.parameters()).detach().clone(), streams


def flower_settings(**overrides: Any) -> FlowerSettings:
    return FlowerSettings(**{**SETTINGS, "timeout": 60.0, **overrides})


def assert_bit_identical(a: Tensor, b: Tensor) -> None:
    assert torch.equal(a.float(), b.float()), f"max |diff| {float((a - b).abs().max()):.3g}"

"""The Flower ``ClientApp``: local SGD on the node's own partition, the update sent as a packed bit stream.

A train message carries the global weights (one fp32 array ``weights``, the parameter vector)
and a config record ``config`` with ``round``, ``client`` and ``rate`` (this client's bit budget
from the server's allocation). The handler runs :func:`llvq.federated.client.local_update` — the
in-trainer simulator's own code, so the same seed gives the bit-identical payload — and replies
with

    ``update``   config record: ``payload`` = :func:`llvq.federated.wire.pack_payload` bytes
    ``metrics``  metric record: ``num-examples`` (the FedAvg weight), ``overloaded``, ``learned``,
                 ``gain_db``, ``signal`` and ``noise`` (the client's own reconstruction error,
                 for the SNR; diagnostics, not part of the rate)

The dither seed is :func:`~llvq.federated.client.round_seed` of (seed, round, client): both ends
compute it; it is never sent. Why not a Lightning ``Trainer`` per round: a client's local
update is a few hundred SGD steps of a tiny model, where a ``Trainer``'s set-up costs more
than the work, and the equivalence with the in-trainer simulator is exact only with its code.

A query message answers ``partition-id`` and ``num-examples`` (the server's roster and FPLD
weights). ``client_app()`` builds an app bound to settings (the simulation); the module-level
``app`` reads them from the run config (deployment: ``flwr run``).
"""

from __future__ import annotations

import copy
import time
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from llvq.federated.client import local_update, round_seed
from llvq.federated.flower.settings import (
    RUN_CONFIG_KEY,
    FlowerSettings,
    client_data,
    initial_model,
    make_compressor,
)
from llvq.federated.wire import pack_payload, unpack_payload

__all__ = ["app", "client_app", "corrupt", "train_reply"]


@lru_cache(maxsize=4)
def _scratch(settings_json: str) -> nn.Module:
    return copy.deepcopy(initial_model(FlowerSettings.from_json(settings_json)))


def corrupt(data: bytes) -> bytes:
    """The stream with its side information overwritten by 0xff bytes (fp32 NaN), as a flipped
    run of bits would leave it; the server must reject it, never average it."""
    p = unpack_payload(data)
    p.side = {k: torch.full_like(v, float("nan")) for k, v in p.side.items()}
    return pack_payload(p)


def train_reply(s: FlowerSettings, content: RecordDict, client: int) -> RecordDict:
    """The reply content of one train message for ``client`` (the fault, if any, applied)."""
    cfg = content["config"]
    round_idx, rate = int(cfg["round"]), float(cfg["rate"])
    if int(cfg["client"]) != client:
        raise ValueError(f"train message for client {cfg['client']} reached partition {client}")
    fault = s.faults.get(client) if not s.fault_rounds or round_idx in s.fault_rounds else None
    if fault == "crash":
        raise RuntimeError(f"client {client}: injected crash in round {round_idx}")
    if fault == "silent":
        time.sleep(s.timeout * 1.5)  # never answers in time
    global_vec = torch.from_numpy(content["arrays"]["weights"].numpy().copy())
    x, y = client_data(s, client)
    comp = make_compressor(s, rate)
    seed = round_seed(s.seed, round_idx, client)
    payload, h = local_update(_scratch(s.to_json()), global_vec, x, y, comp, seed, s.local_lr,
                              s.local_epochs, s.local_steps, s.batch_size)
    data = pack_payload(payload)
    noise = float((comp.decompress(payload, seed, h.numel()).double() - h.double()).pow(2).sum())
    if fault == "corrupt":
        data = corrupt(data)
    metrics = MetricRecord({
        "num-examples": len(y), "overloaded": payload.overloaded, "blocks": payload.blocks,
        "learned": float(payload.stats.get("learned", 0.0)),
        "gain_db": float(payload.stats.get("gain_db", 0.0)),
        "signal": float(h.double().pow(2).sum()), "noise": noise,
    })
    return RecordDict({"update": ConfigRecord({"payload": data}), "metrics": metrics})


def _settings(bound: FlowerSettings | None, context: Context) -> FlowerSettings:
    if bound is not None:
        return bound
    if RUN_CONFIG_KEY not in context.run_config:
        raise KeyError(f"run config lacks '{RUN_CONFIG_KEY}': start the run with "
                       f"`flwr run --run-config` from llvq.federated.flower.deploy")
    return FlowerSettings.from_json(str(context.run_config[RUN_CONFIG_KEY]))


def client_app(settings: FlowerSettings | None = None) -> ClientApp:
    """A ``ClientApp`` bound to ``settings`` (``None``: read them from the run config)."""
    capp = ClientApp()

    @capp.train()
    def train(msg: Message, context: Context) -> Message:
        s = _settings(settings, context)
        client = int(context.node_config["partition-id"])
        return Message(train_reply(s, msg.content, client), reply_to=msg)

    @capp.query()
    def query(msg: Message, context: Context) -> Message:
        s = _settings(settings, context)
        client = int(context.node_config["partition-id"])
        n = len(client_data(s, client)[1])
        return Message(RecordDict({"roster": MetricRecord({"partition-id": client, "num-examples": n})}),
                       reply_to=msg)

    return capp


def weights_record(vec: torch.Tensor) -> ArrayRecord:
    """The global parameter vector as the ``arrays`` record of a train message."""
    return ArrayRecord({"weights": Array(np.ascontiguousarray(vec.detach().cpu().float().numpy()))})


#: the deployment app (``clientapp = "llvq.federated.flower.client:app"``).
app = client_app()

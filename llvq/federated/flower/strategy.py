"""``CompressedFedAvg``: a Flower strategy that receives llvq-compressed updates and averages them.

It is Flower's :class:`~flwr.serverapp.strategy.FedAvg` with three changes:

* **Roster and bit budgets.** Before the first round it asks every node (a query message) for its
  ``partition-id`` (= llvq client ``u``) and data size, and allocates per-client rates from the
  budget ``R P U`` (:func:`llvq.federated.allocation.allocate_rates`: uniform or FPLD). Each
  train message carries that client's ``rate``, its ``client`` id and the ``round``; the dither
  seed is ``round_seed(seed, round, client)`` on both ends, never data.
* **Aggregation of compressed updates.** A reply's ``update.payload`` is a packed bit stream
  (:mod:`llvq.federated.wire`); it is unpacked, decompressed by the client's compressor and
  validated (shape, index range, non-finite values, singular generator: one
  :class:`~llvq.federated.payload.PayloadError`); a rejected payload is counted and logged and
  never averaged (:func:`llvq.federated.server.receive`, the in-trainer server's code). The
  accepted updates are averaged weighted by ``num-examples`` and added to the global weights
  times ``server_lr`` (1: FedAvg).
* **Dropout.** With ``dropout > 0`` the clients of the in-trainer module's draw for the round
  get no message and count as ``dropped`` (a simulated outage, the same clients as in-trainer).
* **Faults.** A reply with an error (the client raised) counts as ``failed``; a client with no
  reply by the round's timeout counts as ``dropped``; neither stops the round. A round with no
  accepted update keeps the global model.

Per round the statistics (the in-trainer module's keys: ``bits``, ``answered``, ``rejected``, ...,
plus ``failed``, ``wire_bytes``: the payload bytes, and ``message_bytes``: what Flower's
``message_size_mod`` counts of the reply) are in :attr:`CompressedFedAvg.history` and returned as
the round's train metrics. ``round_offset`` shifts Flower's round numbers (1, 2, ...) to llvq's
round index (0-based, continuing after a resume).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from torch import Tensor

from llvq.federated.client import round_seed
from llvq.federated.compressors import Compressor
from llvq.federated.flower.client import weights_record
from llvq.federated.flower.settings import FlowerSettings, make_compressor, rates_for
from llvq.federated.payload import PayloadError
from llvq.federated.server import RoundSums, receive
from llvq.federated.wire import unpack_payload

__all__ = ["CompressedFedAvg", "answering"]

log = logging.getLogger("llvq")


class CompressedFedAvg(FedAvg):
    """FedAvg over llvq-compressed client updates (see the module docstring).

    Args:
        settings: the run's settings (compressor, rate, allocation, seed, server_lr, timeout).
        numel: ``P``, coordinates of the model's parameter vector.
        round_offset: llvq round index of Flower's round 1 (``rounds done`` after a resume).
    """

    def __init__(self, settings: FlowerSettings, numel: int, round_offset: int = 0) -> None:
        n = settings.num_clients
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n,
                         min_available_nodes=n)
        self.s, self.numel, self.round_offset = settings, int(numel), int(round_offset)
        self.roster: dict[int, int] = {}  # node id -> client u
        self.sizes: list[int] = []
        self.rates: list[float] = []
        self.compressors: list[Compressor] = []
        self.history: dict[int, dict[str, float]] = {}  # llvq round -> statistics
        self._sent: dict[int, Tensor] = {}  # llvq round -> global vector sent
        self._expected: dict[int, list[int]] = {}  # llvq round -> node ids asked
        self._left_out: dict[int, int] = {}  # llvq round -> clients left out by model.dropout
        self.payloads: dict[int, bytes] = {}  # client -> its payload stream of the last round

    def summary(self) -> None:
        log.info("CompressedFedAvg: compressor=%s rate=%s allocation=%s clients=%d",
                 self.s.compressor, self.s.rate, self.s.allocation, self.s.num_clients)

    # -- roster and bit budgets ---------------------------------------------------------------
    def ensure_roster(self, grid: Grid) -> None:
        """Ask every node for its partition id and data size (once); allocate the rates."""
        if self.roster:
            return
        nodes, _ = sample_nodes(grid, self.s.num_clients, self.s.num_clients)
        msgs = [Message(RecordDict({"config": ConfigRecord({"ask": "roster"})}), dst_node_id=n,
                        message_type=MessageType.QUERY) for n in nodes]
        replies = list(grid.send_and_receive(msgs, timeout=self.s.timeout))
        sizes: dict[int, int] = {}
        for r in replies:
            if r.has_error():
                raise RuntimeError(f"node {r.metadata.src_node_id} failed the roster query: "
                                   f"{r.error.reason}")
            info = r.content["roster"]
            u = int(info["partition-id"])
            if u in sizes or not 0 <= u < self.s.num_clients:
                raise RuntimeError(f"partition-id {u} is duplicated or outside "
                                   f"[0, {self.s.num_clients}): check the SuperNodes' --node-config")
            self.roster[r.metadata.src_node_id] = u
            sizes[u] = int(info["num-examples"])
        if len(sizes) != self.s.num_clients:
            raise RuntimeError(f"{len(sizes)} of {self.s.num_clients} nodes answered the roster "
                               f"query within model.timeout={self.s.timeout:g} s (starting the "
                               f"simulation engine's workers can take minutes on a busy "
                               f"machine: raise model.timeout)")
        self.sizes = [sizes[u] for u in range(self.s.num_clients)]
        self.rates = rates_for(self.s, self.sizes, self.numel)
        self.compressors = [make_compressor(self.s, r) for r in self.rates]
        log.info("roster: sizes %s, rates %s", self.sizes, self.rates)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """One train message per node: the global weights and ``(round, client, rate)``."""
        self.ensure_roster(grid)
        round_idx = self.round_offset + server_round - 1
        self._sent[round_idx] = torch.from_numpy(arrays["weights"].numpy().copy())
        answers = answering(self.s.seed, round_idx, self.s.num_clients, self.s.dropout)
        nodes = [n for n in sorted(self.roster, key=self.roster.__getitem__) if answers[self.roster[n]]]
        self._expected[round_idx] = nodes
        self._left_out[round_idx] = len(self.roster) - len(nodes)
        msgs = []
        for node in nodes:
            u = self.roster[node]
            cfg = ConfigRecord({"round": round_idx, "client": u, "rate": self.rates[u],
                                "server-round": server_round})
            msgs.append(Message(RecordDict({"arrays": arrays, "config": cfg}), dst_node_id=node,
                                message_type=MessageType.TRAIN))
        return msgs

    # -- aggregation ----------------------------------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate, decompress and average; count failed, dropped and rejected clients."""
        round_idx = self.round_offset + server_round - 1
        global_vec = self._sent.pop(round_idx)
        expected = self._expected.pop(round_idx)
        sums = RoundSums(torch.zeros(self.numel, dtype=torch.float64))
        st = sums.stats
        st.update(failed=0.0, wire_bytes=0.0, message_bytes=0.0)
        seen: set[int] = set()
        self.payloads = {}
        # in client order, as the in-trainer server sums them (the same float64 sums)
        for msg in sorted(replies, key=lambda m: self.roster.get(m.metadata.src_node_id, -1)):
            node = msg.metadata.src_node_id
            u = self.roster.get(node)
            if u is None or node in seen:
                continue  # a reply from an unknown node, or a late duplicate
            seen.add(node)
            if msg.has_error():
                st["failed"] += 1
                log.warning("round %d: client %d failed: %s", round_idx, u,
                            msg.error.reason.splitlines()[0][:200] if msg.error.reason else "?")
                continue
            st["message_bytes"] += sum(rec.count_bytes() for rec in msg.content.values())
            self._receive(sums, msg.content, round_idx, u)
        missing = len(set(expected) - seen)
        st["dropped"] += float(missing + self._left_out.pop(round_idx, 0))
        if missing:
            log.warning("round %d: %d client(s) did not answer within %.0f s", round_idx, missing,
                        self.s.timeout)
        self.history[round_idx] = dict(st)
        if st["answered"] == 0:
            log.warning("round %d: no update accepted (%d failed, %d dropped, %d rejected); the "
                        "global model is kept", round_idx, int(st["failed"]), int(st["dropped"]),
                        int(st["rejected"]))
            return weights_record(global_vec), MetricRecord(_metric_values(st))
        avg = sums.weighted / st["weight"]
        new = global_vec.float().add(avg.float(), alpha=self.s.server_lr)  # as FederatedModule.apply_update
        return weights_record(new), MetricRecord(_metric_values(st))

    def _receive(self, sums: RoundSums, content: RecordDict, round_idx: int, u: int) -> None:
        st = sums.stats
        seed = round_seed(self.s.seed, round_idx, u)
        try:
            data = content["update"]["payload"]
            metrics = content["metrics"]
            if not isinstance(data, bytes):
                raise PayloadError("reply's update.payload is not bytes")
            st["wire_bytes"] += len(data)
            self.payloads[u] = data
            payload = unpack_payload(data)
            payload.overloaded = int(metrics.get("overloaded", 0))
            payload.stats = {k: float(metrics.get(k, 0.0)) for k in ("learned", "gain_db")}
            weight = float(metrics["num-examples"])
        except (PayloadError, KeyError) as err:
            st["rejected"] += 1
            log.warning("round %d: client %d's payload rejected: %s", round_idx, u, err)
            return
        reasons: list[str] = []
        if receive(sums, self.compressors[u], payload, seed, weight, reasons=reasons):
            st["signal"] += float(metrics.get("signal", 0.0))
            st["noise"] += float(metrics.get("noise", 0.0))
        else:
            log.warning("round %d: client %d's payload rejected: %s", round_idx, u,
                        reasons[0] if reasons else "?")


def answering(seed: int, round_idx: int, num_clients: int, dropout: float) -> list[bool]:
    """Which clients take part in a round under ``model.dropout``: the in-trainer module's draw
    (:meth:`llvq.modules.FederatedModule.answering`), so both leave out the same clients."""
    gen = torch.Generator().manual_seed(round_seed(seed, round_idx, 999_983))
    return (torch.rand(num_clients, generator=gen) >= dropout).tolist()


def _metric_values(st: dict[str, float]) -> dict[str, float]:
    return {k.replace("_", "-"): float(v) for k, v in st.items()}

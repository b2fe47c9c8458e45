"""The Flower ``ServerApp``: rounds of :class:`CompressedFedAvg`, test accuracy, TensorBoard, checkpoints.

The server holds the global model (built as the in-trainer module builds it, so the same seed
starts from the same weights) and the test set. After every round it evaluates the global
model and writes, under ``settings.output_dir``:

* TensorBoard scalars (``tensorboard/``) with the in-trainer module's names: ``test/acc``,
  ``test/loss``, ``bits/total``, ``bits/per_client``, ``quant/snr_db``, ``quant/overload``,
  ``clients/answered|dropped|rejected|failed``, ``round/skipped``, ``olala/*``, and the wire:
  ``wire/bytes_per_client`` (payload bytes), ``wire/message_bytes_per_client`` (Flower's count of
  the reply), ``round/seconds``;
* ``checkpoints/round{t:04d}.pt`` and ``checkpoints/last.pt``: ``{"round": t, "weights": (P,)
  fp32, "state_dict": ..., "settings": ...}``; ``resume=<checkpoint>`` continues at round ``t+1``;
* ``history.json``: every round's statistics.

``server_app(settings)`` binds settings (the simulation); the module-level ``app`` reads them
from the run config (deployment).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from llvq.federated.flower.client import _settings, weights_record
from llvq.federated.flower.settings import FlowerSettings, initial_model, test_data
from llvq.federated.flower.strategy import CompressedFedAvg

__all__ = ["FlowerServer", "app", "round_values", "server_app"]

log = logging.getLogger("llvq")


def round_values(st: dict[str, float], compressor: str) -> dict[str, float]:
    """The in-trainer module's per-round scalars from a round's statistics (+ Flower's own)."""
    sent = max(st["answered"] + st["rejected"], 1.0)
    snr = 10 * math.log10(max(st["signal"], 1e-300) / st["noise"]) if st["noise"] > 0 else 200.0
    values = {
        "bits/total": st["bits"], "bits/per_client": st["bits"] / sent,
        "quant/snr_db": min(snr, 200.0), "quant/overload": st["overloaded"] / max(st["blocks"], 1.0),
        "clients/answered": st["answered"], "clients/dropped": st["dropped"],
        "clients/rejected": st["rejected"], "clients/failed": st["failed"],
        "round/skipped": float(st["answered"] == 0),
        "wire/bytes_per_client": st["wire_bytes"] / sent,
        "wire/message_bytes_per_client": st["message_bytes"] / max(st["answered"] + st["rejected"], 1.0),
    }
    if compressor == "olala":
        values["olala/learned"] = st["learned"] / max(st["answered"], 1.0)
        values["olala/gain_db"] = st["gain_db"] / max(st["answered"], 1.0)
    return values


class FlowerServer:
    """The server side of a run: model, strategy, evaluation, logging and checkpoints.

    Args:
        settings: the run's settings.
    """

    def __init__(self, settings: FlowerSettings) -> None:
        self.s = settings
        self.net: nn.Module = initial_model(settings)
        self.x_test, self.y_test = test_data(settings)
        self.done = 0  # rounds finished before this run (resume)
        if settings.resume:
            state = torch.load(settings.resume, map_location="cpu", weights_only=True)
            vector_to_parameters(state["weights"].float(), self.net.parameters())
            self.done = int(state["round"]) + 1
            log.info("resumed from %s: continuing at round %d", settings.resume, self.done)
        numel = sum(p.numel() for p in self.net.parameters())
        self.strategy = CompressedFedAvg(settings, numel, round_offset=self.done)
        self.out = Path(settings.output_dir) if settings.output_dir else None
        self.writer: Any = None
        self.rounds: dict[int, dict[str, float]] = {}
        self._t = time.perf_counter()
        self.final: Tensor | None = None  # the global weights after run()

    @torch.no_grad()
    def evaluate(self, vec: Tensor) -> tuple[float, float]:
        """Test loss and accuracy of the weights ``vec``."""
        vector_to_parameters(vec.float(), self.net.parameters())
        self.net.eval()
        logits = torch.cat([self.net(xb) for xb in self.x_test.split(1024)])
        return float(F.cross_entropy(logits, self.y_test)), float((logits.argmax(1) == self.y_test).float().mean())

    def after_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's ``evaluate_fn``: evaluate, log, checkpoint (round 0 = before training: skipped)."""
        if server_round == 0:
            self._t = time.perf_counter()
            return None
        round_idx = self.done + server_round - 1
        vec = torch.from_numpy(arrays["weights"].numpy().copy())
        loss, acc = self.evaluate(vec)
        values = {"test/loss": loss, "test/acc": acc,
                  **round_values(self.strategy.history[round_idx], self.s.compressor),
                  "round/seconds": time.perf_counter() - self._t}
        self._t = time.perf_counter()
        self.rounds[round_idx] = values
        log.info("round %d: acc %.4f, %d answered, %d rejected, %d failed, %d dropped", round_idx,
                 acc, values["clients/answered"], values["clients/rejected"],
                 values["clients/failed"], values["clients/dropped"])
        if self.out is not None:
            self._write(round_idx, vec, values)
        return MetricRecord({k.replace("/", "-"): float(v) for k, v in values.items()})

    def _write(self, round_idx: int, vec: Tensor, values: dict[str, float]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self.writer is None:
            self.writer = SummaryWriter(str(self.out / "tensorboard"))
        for k, v in values.items():
            self.writer.add_scalar(k, v, global_step=round_idx)
        self.writer.flush()
        ckpt = self.out / "checkpoints"
        ckpt.mkdir(parents=True, exist_ok=True)
        state = {"round": round_idx, "weights": vec.float(), "state_dict": self.net.state_dict(),
                 "settings": self.s.to_json()}
        torch.save(state, ckpt / f"round{round_idx:04d}.pt")
        torch.save(state, ckpt / "last.pt")
        (self.out / "history.json").write_text(json.dumps(self.rounds, indent=1, sort_keys=True))

    def run(self, grid: Grid) -> Tensor:
        """All remaining rounds through Flower's strategy loop; returns the final weights."""
        start = weights_record(parameters_to_vector(self.net.parameters()).detach())
        remaining = max(self.s.rounds - self.done, 0)
        result = self.strategy.start(grid, start, num_rounds=remaining, timeout=self.s.timeout,
                                     evaluate_fn=self.after_round)
        if self.writer is not None:
            self.writer.close()
        self.final = torch.from_numpy(result.arrays["weights"].numpy().copy()) if remaining else \
            parameters_to_vector(self.net.parameters()).detach()
        return self.final


def server_app(settings: FlowerSettings | None = None,
               done: list[FlowerServer] | None = None) -> ServerApp:
    """A ``ServerApp`` bound to ``settings`` (``None``: read them from the run config);
    the finished :class:`FlowerServer` is appended to ``done`` when given."""
    sapp = ServerApp()

    @sapp.main()
    def main(grid: Grid, context: Context) -> None:
        server = FlowerServer(_settings(settings, context))
        server.run(grid)
        if done is not None:
            done.append(server)

    return sapp


#: the deployment app (``serverapp = "llvq.federated.flower.server:app"``).
app = server_app()

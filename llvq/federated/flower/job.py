"""``python train.py experiment=olala_flower``: a Flower run as a trainer job.

:class:`FlowerJob` takes the keys of ``configs/model/federated.yaml`` (the in-trainer
simulator's: clients, split, model, compressor, rate, overload, ...) plus Flower's own
(``engine``, ``timeout``, ``num_cpus``, ``cpus_per_client``, ``resume``, ``faults``). Its one
unit is the whole Flower run (all ``rounds``, ``trainer.max_epochs=1``): Flower's
strategy loop drives the rounds, not Lightning. The server writes its per-round TensorBoard
scalars, ``history.json`` and a checkpoint per round under ``<output_dir>`` (``flower/`` of the
run folder); the job logs the final ``test/acc`` and ``test/loss`` to the trainer's loggers and
holds the final global model (``self.net``) in the trainer's checkpoint.

Engines: ``simulation`` (Flower's simulation engine on Ray) or ``local`` (the same apps called
in this process, no engine). A deployment on separate processes is
:mod:`llvq.federated.flower.deploy`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor
from torch.nn.utils import vector_to_parameters

from llvq.federated.flower.settings import FlowerSettings, initial_model
from llvq.federated.flower.simulation import run_local, simulate
from llvq.modules.step_job import StepJob

__all__ = ["ENGINES", "FlowerJob"]

log = logging.getLogger("llvq")

#: how a :class:`FlowerJob` runs its rounds.
ENGINES = ("simulation", "local")


def _plain(options: Any) -> Any:
    if isinstance(options, (DictConfig, ListConfig)):
        return OmegaConf.to_container(options, resolve=True)
    return options


class FlowerJob(StepJob):
    """A whole Flower run (all rounds) as one trainer unit.

    Args:
        engine: ``simulation`` (Ray) or ``local`` (in this process).
        num_cpus: CPUs the simulation engine may use (``None``: all).
        cpus_per_client: CPUs per simulated client (clients run in parallel up to ``num_cpus``).
        **settings: :class:`~llvq.federated.flower.settings.FlowerSettings` fields (the
            federated model config's keys; ``plot_clients`` / ``plot_every`` are ignored).
    """

    def __init__(self, engine: str = "simulation", num_cpus: int | None = None,
                 cpus_per_client: float = 1.0, **settings: Any) -> None:
        super().__init__()
        if engine not in ENGINES:
            raise ValueError(f"model.engine must be one of {ENGINES}, got '{engine}'")
        settings = {k: _plain(v) for k, v in settings.items()}
        self.save_hyperparameters()
        self.settings = FlowerSettings.from_mapping(settings)
        self.net = initial_model(self.settings)
        self.summary: dict[str, Any] | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def units_per_epoch(self) -> int:
        return 1

    def on_fit_start(self) -> None:
        if self.trainer.max_epochs not in (None, -1, 1):
            log.warning("a Flower run is one unit: trainer.max_epochs=%s runs it %s times; "
                        "experiment=olala_flower sets 1", self.trainer.max_epochs,
                        self.trainer.max_epochs)

    def run_unit(self, index: int) -> None:
        hp = self.hparams
        s = self.settings
        if self.trainer.fast_dev_run and s.rounds > 1:
            log.info("fast_dev_run: one Flower round instead of model.rounds=%d", s.rounds)
            s = dataclasses.replace(s, rounds=1)
        if hp.engine == "simulation":
            self.summary = simulate(s, hp.num_cpus, hp.cpus_per_client)
        else:
            self.summary = run_local(s)
        server = self.summary["server"]
        if server.rounds:
            last = server.rounds[max(server.rounds)]
            self.log("test/acc", last["test/acc"], prog_bar=True, batch_size=1)
            self.log("test/loss", last["test/loss"], batch_size=1)
            self.log("clients/rejected", sum(r["clients/rejected"] for r in server.rounds.values()),
                     batch_size=1)
        if server.final is not None:
            with torch.no_grad():
                vector_to_parameters(server.final.float().clone(), self.net.parameters())
        log.info("Flower run (%s engine): %d round(s) in %.1f s, final test/acc %s; per-round "
                 "scalars and checkpoints under %s", hp.engine, len(server.rounds),
                 self.summary["seconds"], self.summary["final_acc"], s.output_dir)

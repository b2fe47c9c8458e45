"""A whole run on one machine: Flower's simulation engine (Ray), or in this process (no engine).

:func:`simulate` runs the ``ServerApp`` and one virtual SuperNode per client through
``flwr.simulation.run_simulation`` (Ray actors); :func:`run_local` runs the same apps through
:class:`~llvq.federated.flower.local.LocalGrid` in this process (no Ray, no sockets: the tests
and the bench's "no transport" figures). Both return the same summary.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from llvq.federated.flower.client import client_app
from llvq.federated.flower.local import LocalGrid
from llvq.federated.flower.server import FlowerServer, server_app
from llvq.federated.flower.settings import FlowerSettings

__all__ = ["run_local", "simulate"]

log = logging.getLogger("llvq")


def simulate(settings: FlowerSettings, num_cpus: int | None = None,
             cpus_per_client: float = 1.0) -> dict[str, Any]:
    """Run ``settings.rounds`` rounds in Flower's simulation engine; returns the summary.

    Ray binds to 127.0.0.1 only and starts no dashboard.

    Args:
        settings: the run.
        num_cpus: CPUs Ray may use (``None``: all of this machine's).
        cpus_per_client: CPUs per client actor (clients run in parallel up to ``num_cpus``).

    Returns:
        ``{"rounds": {round: scalars}, "final_acc", "seconds", "server"}`` (``server``: the
        finished :class:`~llvq.federated.flower.server.FlowerServer`, its strategy's history
        and last round's payload streams included).
    """
    from flwr.simulation import run_simulation

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    done: list[FlowerServer] = []
    init_args: dict[str, Any] = {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}
    if num_cpus is not None:
        init_args["num_cpus"] = int(num_cpus)
    t0 = time.perf_counter()
    run_simulation(server_app(settings, done), client_app(settings), settings.num_clients,
                   backend_config={"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
                                   "init_args": init_args})
    if not done:
        raise RuntimeError("the Flower simulation ended without finishing its ServerApp (see the log)")
    return _summary(done[0], t0)


def run_local(settings: FlowerSettings) -> dict[str, Any]:
    """Run ``settings.rounds`` rounds with the ClientApp called in this process (no engine)."""
    t0 = time.perf_counter()
    server = FlowerServer(settings)
    server.run(LocalGrid(client_app(settings), settings.num_clients))
    return _summary(server, t0)


def _summary(server: FlowerServer, t0: float) -> dict[str, Any]:
    """``{"rounds": {round: scalars}, "final_acc", "seconds", "server"}``."""
    rounds = server.rounds
    last = max(rounds) if rounds else None
    return {"rounds": rounds, "final_acc": rounds[last]["test/acc"] if last is not None else None,
            "seconds": time.perf_counter() - t0, "server": server}

"""The settings of a Flower run and what both ends build from them, as the in-trainer simulator does.

:class:`FlowerSettings` holds the keys of ``configs/model/federated.yaml`` (the same names and
meanings as :class:`llvq.modules.FederatedModule`) plus Flower's own (``timeout``, ``resume``,
...). It travels to the apps as one JSON string in Flower's run config (key
``llvq-settings``), so ``flwr run --run-config`` and the simulation engine see the same thing.

The client data, the initial model and the compressors are built here in the order the
in-trainer module builds them, so a Flower run and ``train.py experiment=olala_digits`` with
the same seed start from the same weights, split and dither seeds (checked by
``tests/federated/flower/test_strategy.py``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from llvq.federated.allocation import allocate_rates
from llvq.federated.compressors import COMPRESSORS, Compressor, build_compressor
from llvq.federated.data import load_federated_data
from llvq.federated.models import build_model
from llvq.federated.split import dirichlet_split, iid_split

__all__ = ["FAULTS", "RUN_CONFIG_KEY", "FlowerSettings", "client_data", "initial_model",
           "make_compressor", "rates_for"]

#: the run-config key that carries the settings as JSON.
RUN_CONFIG_KEY = "llvq-settings"

#: injectable client faults (tests, the bench): raise, send a corrupted stream, never answer.
FAULTS = ("crash", "corrupt", "silent")

#: module settings a compressor receives when its constructor takes them (as FederatedModule).
_SHARED = {"lattice": "lattice", "overload": "overload", "steps": "olala_steps", "lr": "olala_lr"}


@dataclass
class FlowerSettings:
    """A Flower run; the first block of fields is ``configs/model/federated.yaml``'s.

    Args:
        dataset, model, num_clients, alpha, compressor, rate, allocation, lattice, overload,
            olala_steps, olala_lr, rounds, local_epochs, local_steps, local_lr, batch_size,
            server_lr, dropout, seed, data_dir, download, compressor_options, model_options: as
            :class:`llvq.modules.FederatedModule` (``dropout``: the server leaves out the clients
            of the module's own draw, counted as dropped). ``num_clients`` is the number of SuperNodes
            (partitions); client ``u`` is the node whose ``partition-id`` is ``u``.
        timeout: seconds the server waits for a round's replies; a client that has not
            answered by then is counted as dropped.
        output_dir: TensorBoard events (``tensorboard/``), ``checkpoints/round*.pt``,
            ``checkpoints/last.pt`` and ``history.json`` (``None``: nothing written).
        resume: a checkpoint to continue from (its next round), ``None``: start at round 0.
        faults: ``{client: fault}`` with a fault of :data:`FAULTS` (tests and the bench).
        fault_rounds: rounds in which the faults fire (empty: every round).
    """

    dataset: str = "digits"
    model: str = "cnn"
    num_clients: int = 10
    alpha: float | None = 1.0
    compressor: str = "olala"
    rate: float = 2.0
    allocation: str = "uniform"
    lattice: str = "A2"
    overload: float | None = 0.01
    olala_steps: int = 100
    olala_lr: float = 3e-3
    rounds: int = 50
    local_epochs: int = 1
    local_steps: int | None = None
    local_lr: float = 0.1
    batch_size: int = 32
    server_lr: float = 1.0
    dropout: float = 0.0
    seed: int = 0
    data_dir: str = "data"
    download: bool = False
    compressor_options: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)
    timeout: float = 600.0
    output_dir: str | None = None
    resume: str | None = None
    faults: dict[int, str] = field(default_factory=dict)
    fault_rounds: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.faults = {int(k): str(v) for k, v in dict(self.faults).items()}
        self.fault_rounds = [int(r) for r in self.fault_rounds]
        self.compressor_options = dict(self.compressor_options)
        self.model_options = dict(self.model_options)
        bad = {k: v for k, v in self.faults.items() if v not in FAULTS}
        if bad:
            raise ValueError(f"model.faults: unknown fault(s) {bad}; use one of {FAULTS}")
        if self.num_clients < 1 or self.rounds < 0 or self.timeout <= 0:
            raise ValueError("model.num_clients >= 1, model.rounds >= 0 and model.timeout > 0 needed")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.local_lr <= 0 or self.server_lr <= 0:
            raise ValueError("model.local_lr and model.server_lr must be > 0")
        COMPRESSORS.get(self.compressor)  # an unknown name fails here, listing the known ones

    @classmethod
    def from_mapping(cls, options: dict[str, Any]) -> FlowerSettings:
        """From a plain mapping (a Hydra ``model`` node as a container); ``_target_`` and keys of
        the in-trainer module that have no meaning here (plots) are ignored, any other unknown
        key is an error naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        ignored = {"_target_", "plot_clients", "plot_every"}
        unknown = sorted(set(options) - known - ignored)
        if unknown:
            raise ValueError(f"unknown Flower setting(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in options.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FlowerSettings:
        return cls(**json.loads(text))

    def compressor_kwargs(self) -> dict[str, Any]:
        takes = COMPRESSORS.get(self.compressor).options()
        settings = {"lattice": self.lattice, "overload": self.overload,
                    "olala_steps": self.olala_steps, "olala_lr": self.olala_lr}
        kwargs = {opt: settings[key] for opt, key in _SHARED.items() if opt in takes}
        kwargs.update(self.compressor_options)
        return kwargs


@lru_cache(maxsize=4)
def _federation(dataset: str, data_dir: str, download: bool, seed: int, num_clients: int,
                alpha: float | None) -> tuple[list[tuple[Tensor, Tensor]], Tensor, Tensor]:
    x, y, x_test, y_test = load_federated_data(dataset, data_dir, download, seed)
    shares = (iid_split(len(y), num_clients, seed) if alpha is None
              else dirichlet_split(y, num_clients, alpha, seed))
    return [(x[idx], y[idx]) for idx in shares], x_test, y_test


def client_data(s: FlowerSettings, client: int) -> tuple[Tensor, Tensor]:
    """Client ``client``'s ``(x, y)``: the in-trainer module's Dirichlet (or IID) split."""
    if not 0 <= client < s.num_clients:
        raise ValueError(f"partition-id {client} outside [0, model.num_clients={s.num_clients})")
    return _federation(s.dataset, s.data_dir, s.download, s.seed, s.num_clients, s.alpha)[0][client]


def test_data(s: FlowerSettings) -> tuple[Tensor, Tensor]:
    """The server's test set."""
    return _federation(s.dataset, s.data_dir, s.download, s.seed, s.num_clients, s.alpha)[1:]


test_data.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def initial_model(s: FlowerSettings) -> nn.Module:
    """The global model as the in-trainer module builds it (``torch.manual_seed(seed)`` first)."""
    x = client_data(s, 0)[0]
    y_test = test_data(s)[1]
    full_y = torch.cat([y_test] + [client_data(s, u)[1] for u in range(s.num_clients)])
    num_classes = int(full_y.max()) + 1
    torch.manual_seed(s.seed)
    return build_model(s.model, tuple(x.shape[1:]), num_classes, **s.model_options)


def make_compressor(s: FlowerSettings, rate: float) -> Compressor:
    """The compressor of ``s`` at ``rate`` bits per coordinate."""
    return build_compressor(s.compressor, rate, **s.compressor_kwargs())


def rates_for(s: FlowerSettings, sizes: list[int], numel: int) -> list[float]:
    """Per-client rates (``model.allocation``: uniform or FPLD) from the clients' data sizes."""
    block = make_compressor(s, s.rate).block
    return allocate_rates(s.rate, sizes, numel, block, s.allocation)

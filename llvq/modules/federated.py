"""Federated learning with compressed updates through the trainer: one ``training_step`` = one round.

``python train.py experiment=olala_digits``  (OLALa, Lang et al.; UVeQFed, Shlezinger et al. 2020)

The module holds the global model (``self.net``) and builds its clients from a data set split
by Dirichlet(alpha) (:mod:`llvq.federated.split`). A round ``t``: every client that does not
drop out (probability ``dropout``, drawn from ``(seed, t)``) runs local SGD from the global
weights, compresses its update ``h = w_client - w_global`` at its rate ``R_u``
(:mod:`llvq.federated.compressors`), and the server validates, decompresses and averages
(FedAvg weighted by client data size). Under DDP the clients are shared out across ranks
(client ``u`` on rank ``u mod world``) and the weighted sums are all-reduced, so the global
model does not depend on the number of processes. The server applies the average through a
The module is a :class:`~llvq.modules.step_job.StepJob`: one unit is one round, and the server
adds ``server_lr`` times the average to the global weights (1: FedAvg) itself; no optimizer, no
gradients. ``global_step`` counts rounds.

Each round is also one epoch (one unit per epoch; ``experiment=olala_digits`` sets
``trainer.max_epochs`` to ``model.rounds``), so the checkpoint written after every round is an
epoch-end checkpoint and a stopped or crashed run resumes at the next round with
``ckpt_path=<run>/checkpoints/last.ckpt``.

Compressors, client models and data sets are chosen by name from their registries
(:data:`llvq.federated.COMPRESSORS`, :data:`~llvq.federated.MODELS`,
:data:`~llvq.federated.DATASETS`), so a plugin's own work here unchanged.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.nn.utils import parameters_to_vector

from llvq.federated.allocation import allocate_rates
from llvq.federated.client import local_update, round_seed
from llvq.federated.compressors import COMPRESSORS, LatticeCompressor, build_compressor
from llvq.federated.data import load_federated_data
from llvq.federated.models import build_model
from llvq.federated.payload import Payload
from llvq.federated.server import RoundSums, receive
from llvq.federated.split import dirichlet_split, iid_split
from llvq.lattices import bounded_code
from llvq.modules._build import positive_int, positive_number
from llvq.modules.step_job import StepJob

__all__ = ["FederatedModule"]

log = logging.getLogger("llvq")


#: the module's settings a compressor receives when its constructor takes them (option name ->
#: setting); everything else for a compressor goes in ``compressor_options``.
SHARED_OPTIONS = {"lattice": "lattice", "overload": "overload", "steps": "olala_steps",
                  "lr": "olala_lr"}


def _plain(options: Any) -> dict[str, Any]:
    """A config node or mapping of options as a plain ``dict`` (``None``: empty)."""
    if options is None:
        return {}
    if isinstance(options, DictConfig):
        return OmegaConf.to_container(options, resolve=True)  # type: ignore[return-value]
    return dict(options)


class FederatedModule(StepJob):
    """Federated rounds with a pluggable update compressor; one unit (training step) = one round.

    Args:
        dataset: ``digits``, ``mnist``, ``cifar10`` or a registered plugin data set.
        model: ``linear``, ``mlp``, ``cnn`` or a registered plugin model.
        num_clients: ``U``.
        alpha: Dirichlet concentration of the label split; ``null`` = IID.
        compressor: ``none``, ``uniform``, ``qsgd``, ``lattice``, ``olala`` or a registered
            plugin compressor. It receives ``rate`` and those of ``lattice``, ``overload``,
            ``olala_steps`` (as ``steps``) and ``olala_lr`` (as ``lr``) its constructor takes.
        rate: mean rate ``R`` in bits per coordinate.
        allocation: ``uniform`` (every client ``R``) or ``fpld`` (log-tilted water-filling by data size).
        lattice: lattice of ``lattice`` / starting lattice of ``olala``.
        overload: target overload probability of the scale ``zeta``; ``null``: the scale with the
            least squared error on each update.
        olala_steps, olala_lr: online lattice learning (Adam steps and step size per client and round).
        rounds: number of rounds; one round per epoch, so the trainer's ``max_epochs`` decides
            (``experiment=olala_digits`` sets it to ``rounds``; a mismatch is logged).
        local_epochs, local_steps, local_lr, batch_size: local SGD (``local_steps`` overrides epochs).
        server_lr: step size of the global update (1 = FedAvg).
        dropout: probability that a client does not answer in a round.
        seed: seeds the split, the model, the dither and the dropouts.
        data_dir, download: torchvision data sets.
        plot_clients: save the learned lattices of clients ``0..plot_clients-1`` as PNGs.
        plot_every: every this many rounds.
        output_dir: where the pictures go (``None``: the trainer's ``default_root_dir``).
        compressor_options: more options of the compressor, passed as they are (an option it
            does not take is an error naming it), e.g. ``{batch_size: 256}`` for ``olala``.
        model_options: options of the client model (``{hidden: 128}``), checked the same way.
    """

    def __init__(self, dataset: str = "digits", model: str = "cnn", num_clients: int = 10,
                 alpha: float | None = 1.0, compressor: str = "olala", rate: float = 2.0,
                 allocation: str = "uniform", lattice: str = "A2", overload: float | None = 0.01,
                 olala_steps: int = 100, olala_lr: float = 3e-3, rounds: int = 50,
                 local_epochs: int = 1, local_steps: int | None = None, local_lr: float = 0.1,
                 batch_size: int = 32, server_lr: float = 1.0, dropout: float = 0.0, seed: int = 0,
                 data_dir: str = "data", download: bool = False, plot_clients: int = 2,
                 plot_every: int = 10, output_dir: str | None = None,
                 compressor_options: dict[str, Any] | None = None,
                 model_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        # plain dicts in the hyper-parameters: a checkpoint must load with weights_only=True
        compressor_options, model_options = _plain(compressor_options), _plain(model_options)
        positive_int(num_clients, "model.num_clients")
        if not 0 <= dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        positive_number(local_lr, "model.local_lr")
        positive_number(server_lr, "model.server_lr")
        self.save_hyperparameters()
        x, y, self.x_test, self.y_test = load_federated_data(dataset, data_dir, download, seed)
        num_classes = int(max(int(y.max()), int(self.y_test.max())) + 1)
        shares = (iid_split(len(y), num_clients, seed) if alpha is None
                  else dirichlet_split(y, num_clients, alpha, seed))
        self.clients = [(x[idx], y[idx]) for idx in shares]
        torch.manual_seed(seed)
        self.net = build_model(model, tuple(x.shape[1:]), num_classes, **model_options)
        self._scratch = [copy.deepcopy(self.net)]  # a list: not a submodule, not in checkpoints
        sizes = [len(idx) for idx in shares]
        settings = {"lattice": lattice, "overload": overload, "olala_steps": olala_steps,
                    "olala_lr": olala_lr}
        takes = COMPRESSORS.get(compressor).options()
        kwargs = {opt: settings[key] for opt, key in SHARED_OPTIONS.items() if opt in takes}
        kwargs.update(compressor_options)
        probe = build_compressor(compressor, rate, **kwargs)
        numel = sum(p.numel() for p in self.net.parameters())
        self.rates = allocate_rates(rate, sizes, numel, probe.block, allocation)
        self.compressors = [build_compressor(compressor, r, **kwargs) for r in self.rates]
        self.weights = [float(s) for s in sizes]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def units_per_epoch(self) -> int:
        """One round per epoch (clients draw their own batches), so every round ends in a
        checkpoint and a resume starts at the next round."""
        return 1

    def on_fit_start(self) -> None:
        max_epochs = self.trainer.max_epochs
        if max_epochs not in (None, -1, self.hparams.rounds) and not self.trainer.fast_dev_run:
            log.warning("one federated round is one epoch: trainer.max_epochs=%s rounds will run, "
                        "not model.rounds=%d (experiment=olala_digits ties the two)", max_epochs,
                        self.hparams.rounds)

    def _rank_world(self) -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def answering(self, round_idx: int) -> list[bool]:
        """Which clients answer in this round (the same draw on every rank)."""
        gen = torch.Generator().manual_seed(round_seed(self.hparams.seed, round_idx, 999_983))
        return (torch.rand(self.hparams.num_clients, generator=gen) >= self.hparams.dropout).tolist()

    def run_round(self, round_idx: int) -> tuple[Tensor | None, dict[str, float]]:
        """One round: the averaged update (``None`` when no client answered) and its statistics."""
        hp = self.hparams
        rank, world = self._rank_world()
        global_vec = parameters_to_vector(self.net.parameters()).detach().cpu()
        sums = RoundSums(torch.zeros(global_vec.numel(), dtype=torch.float64))
        answers = self.answering(round_idx)
        for u in range(rank, hp.num_clients, world):
            if not answers[u]:
                sums.stats["dropped"] += 1
                continue
            seed = round_seed(hp.seed, round_idx, u)
            x, y = self.clients[u]
            payload, h = local_update(self._scratch[0], global_vec, x, y, self.compressors[u], seed,
                                      hp.local_lr, hp.local_epochs, hp.local_steps, hp.batch_size)
            payload = self.tamper(payload, round_idx, u)
            receive(sums, self.compressors[u], payload, seed, self.weights[u], h)
            self._maybe_plot(payload, round_idx, u)
        if world > 1:
            v = sums.as_vector()
            dist.all_reduce(v, op=dist.ReduceOp.SUM)
            sums.load_vector(v)
        s = sums.stats
        avg = sums.weighted / s["weight"] if s["answered"] > 0 else None
        return avg, s

    def tamper(self, payload: Any, round_idx: int, client: int) -> Any:
        """Hook for fault injection (tests): return the payload as it reaches the server."""
        return payload

    def run_unit(self, index: int) -> None:
        """Round ``global_step``: run it, apply the average, log it."""
        round_idx = self.global_step
        avg, s = self.run_round(round_idx)
        if avg is None:
            log.warning("round %d: no client answered (%d dropped, %d rejected); the global model "
                        "is kept", round_idx, int(s["dropped"]), int(s["rejected"]))
        else:
            self.apply_update(avg)
        self._log_round(s, avg is None)

    @torch.no_grad()
    def apply_update(self, avg: Tensor) -> None:
        """The server's step: ``w += server_lr * avg`` (``avg``: the ``(P,)`` averaged update,
        the same on every rank after the all-reduce)."""
        delta = avg.float()
        pos = 0
        for p in self.net.parameters():
            n = p.numel()
            p.add_(delta[pos:pos + n].view_as(p).to(p.device), alpha=self.hparams.server_lr)
            pos += n

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Test loss and accuracy of the global model."""
        self.net.eval()
        logits = torch.cat([self.net(xb) for xb in self.x_test.split(1024)])
        self.net.train()
        return float(F.cross_entropy(logits, self.y_test)), float((logits.argmax(1) == self.y_test).float().mean())

    def _log_round(self, s: dict[str, float], skipped: bool) -> None:
        loss, acc = self.evaluate()
        snr = 10 * math.log10(max(s["signal"], 1e-300) / s["noise"]) if s["noise"] > 0 else float("inf")
        values = {
            "test/loss": loss, "test/acc": acc,
            "bits/total": s["bits"], "bits/per_client": s["bits"] / max(s["answered"] + s["rejected"], 1.0),
            "quant/snr_db": min(snr, 200.0), "quant/overload": s["overloaded"] / max(s["blocks"], 1.0),
            "clients/answered": s["answered"], "clients/dropped": s["dropped"],
            "clients/rejected": s["rejected"], "round/skipped": float(skipped),
        }
        if self.hparams.compressor == "olala":
            answered = max(s["answered"], 1.0)
            values["olala/learned"] = s["learned"] / answered  # share of clients sending a learned G
            values["olala/gain_db"] = s["gain_db"] / answered  # mean gain over G0 on their update
        for k, v in values.items():
            self.log(k, v, on_step=True, prog_bar=k in ("test/acc", "quant/snr_db"), batch_size=1)

    def _maybe_plot(self, payload: Payload, round_idx: int, client: int) -> None:
        hp = self.hparams
        comp = self.compressors[client]
        if client >= hp.plot_clients or round_idx % max(hp.plot_every, 1) or "generator" not in payload.side:
            return
        if self._trainer is None or self.trainer.fast_dev_run or not isinstance(comp, LatticeCompressor):
            return
        g = payload.side["generator"].double()
        if g.shape[0] != 2:
            return
        coords, centre = bounded_code(g, comp.size)
        pts = (coords.double() @ g - centre) * payload.side["zeta"].double()
        fig = Figure(figsize=(3, 3))  # no pyplot: no GUI backend, no global state
        ax = fig.subplots()
        ax.scatter(pts[:, 0], pts[:, 1], s=8)
        ax.set_aspect("equal")
        ax.set_title(f"client {client}, round {round_idx}")
        out = Path(hp.output_dir or self.trainer.default_root_dir) / "lattices"
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / f"round{round_idx:04d}_client{client}.png", dpi=80)
        for lg in self.loggers:
            if hasattr(getattr(lg, "experiment", None), "add_figure"):
                lg.experiment.add_figure(f"lattice/client{client}", fig, global_step=round_idx)

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
plain SGD optimizer with ``lr = server_lr`` (1: FedAvg), so ``global_step`` counts rounds.

Each round is also one epoch (a one-item dataloader; ``experiment=olala_digits`` sets
``trainer.max_epochs`` to ``model.rounds``), so the checkpoint written after every round is an
epoch-end checkpoint and a stopped or crashed run resumes at the next round with
``ckpt_path=<run>/checkpoints/last.ckpt``.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils import parameters_to_vector

from llvq.federated.allocation import allocate_rates
from llvq.federated.client import local_update, round_seed
from llvq.federated.compressors import build_compressor
from llvq.federated.data import load_federated_data
from llvq.federated.models import build_model
from llvq.federated.server import RoundSums, receive
from llvq.federated.split import dirichlet_split, iid_split

__all__ = ["FederatedModule"]

log = logging.getLogger("llvq")


class FederatedModule(L.LightningModule):
    """Federated rounds with a pluggable update compressor.

    Args:
        dataset: ``digits``, ``mnist`` or ``cifar10``.
        model: ``linear``, ``mlp`` or ``cnn``.
        num_clients: ``U``.
        alpha: Dirichlet concentration of the label split; ``null`` = IID.
        compressor: ``none``, ``uniform``, ``qsgd``, ``lattice`` or ``olala``.
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
    """

    def __init__(self, dataset: str = "digits", model: str = "cnn", num_clients: int = 10,
                 alpha: float | None = 1.0, compressor: str = "olala", rate: float = 2.0,
                 allocation: str = "uniform", lattice: str = "A2", overload: float | None = 0.01,
                 olala_steps: int = 100, olala_lr: float = 3e-3, rounds: int = 50,
                 local_epochs: int = 1, local_steps: int | None = None, local_lr: float = 0.1,
                 batch_size: int = 32, server_lr: float = 1.0, dropout: float = 0.0, seed: int = 0,
                 data_dir: str = "data", download: bool = False, plot_clients: int = 2,
                 plot_every: int = 10, output_dir: str | None = None) -> None:
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        if local_lr <= 0 or server_lr <= 0:
            raise ValueError("model.local_lr and model.server_lr must be > 0")
        self.save_hyperparameters()
        self.automatic_optimization = False
        x, y, self.x_test, self.y_test = load_federated_data(dataset, data_dir, download, seed)
        num_classes = int(max(int(y.max()), int(self.y_test.max())) + 1)
        shares = (iid_split(len(y), num_clients, seed) if alpha is None
                  else dirichlet_split(y, num_clients, alpha, seed))
        self.clients = [(x[idx], y[idx]) for idx in shares]
        torch.manual_seed(seed)
        self.net = build_model(model, tuple(x.shape[1:]), num_classes)
        self._scratch = [copy.deepcopy(self.net)]  # a list: not a submodule, not in DDP or checkpoints
        sizes = [len(idx) for idx in shares]
        kwargs = {"lattice": lattice, "overload": overload, "steps": olala_steps, "lr": olala_lr}
        probe = build_compressor(compressor, rate, **kwargs)
        numel = sum(p.numel() for p in self.net.parameters())
        self.rates = allocate_rates(rate, sizes, numel, getattr(probe, "block", 1), allocation)
        self.compressors = [build_compressor(compressor, r, **kwargs) for r in self.rates]
        self.weights = [float(s) for s in sizes]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def train_dataloader(self) -> list[int]:
        """One item per epoch: an epoch is one round (clients draw their own batches)."""
        return [0]

    def on_fit_start(self) -> None:
        max_epochs = self.trainer.max_epochs
        if max_epochs not in (None, -1, self.hparams.rounds) and not self.trainer.fast_dev_run:
            log.warning("one federated round is one epoch: trainer.max_epochs=%s rounds will run, "
                        "not model.rounds=%d (experiment=olala_digits ties the two)", max_epochs,
                        self.hparams.rounds)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.net.parameters(), lr=self.hparams.server_lr)

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

    def training_step(self, batch: Any, batch_idx: int) -> None:
        round_idx = self.global_step
        avg, s = self.run_round(round_idx)
        opt = self.optimizers()
        opt.zero_grad()
        for p in self.net.parameters():
            p.grad = torch.zeros_like(p)
        if avg is None:
            log.warning("round %d: no client answered (%d dropped, %d rejected); the global model "
                        "is kept", round_idx, int(s["dropped"]), int(s["rejected"]))
        else:
            torch.nn.utils.vector_to_parameters(-avg.float(),
                                                [p.grad for p in self.net.parameters()])
        opt.step()  # lr = server_lr; a zero gradient keeps the model
        self._log_round(s, avg is None)

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

    def _maybe_plot(self, payload: Any, round_idx: int, client: int) -> None:
        hp = self.hparams
        if client >= hp.plot_clients or round_idx % max(hp.plot_every, 1) or "generator" not in payload.side:
            return
        if self._trainer is None or self.trainer.fast_dev_run:
            return
        import matplotlib

        from llvq.lattices import bounded_code
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        g = payload.side["generator"].double()
        if g.shape[0] != 2:
            return
        coords, centre = bounded_code(g, self.compressors[client].size)
        pts = (coords.double() @ g - centre) * payload.side["zeta"].double()
        fig, ax = plt.subplots(figsize=(3, 3))
        ax.scatter(pts[:, 0], pts[:, 1], s=8)
        ax.set_aspect("equal")
        ax.set_title(f"client {client}, round {round_idx}")
        out = Path(hp.output_dir or self.trainer.default_root_dir) / "lattices"
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / f"round{round_idx:04d}_client{client}.png", dpi=80)
        for lg in self.loggers:
            if hasattr(getattr(lg, "experiment", None), "add_figure"):
                lg.experiment.add_figure(f"lattice/client{client}", fig, global_step=round_idx)
        plt.close(fig)

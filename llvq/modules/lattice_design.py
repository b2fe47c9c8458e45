"""Lattice design through the trainer: every training step is one SGD batch on the NSM.

``python train.py experiment=lattice_design lattice.dim=13 lattice.method=householder``

The module owns a :class:`~llvq.lattices.design.LatticeParametrization` (free lower-triangular,
splice, Householder or matrix-exponential fusion) and draws its own uniform samples from a
seeded generator (step ``t`` uses seed ``(seed, t)``, so a resumed run draws what the
uninterrupted one would). ``train_dataloader`` yields step indices only. Each step: ``u ~
U[0,1)^n``, exact closest point, NSM loss (Agrell & Eriksson 1998, eq. 11-13), one SGD step
with the annealed size ``lr / (1 + t / anneal)``, renormalise to unit volume, and every
``reduce_every`` steps an LLL reduction (``free``). With ``glue=True`` the start is the densest
glued superlattice of the parts (:mod:`llvq.lattices.glue`) instead of their splice. At the end
(rank zero) the precise NSM ± s.e. is estimated and the generator is written to
``<output_dir>/lattice_dim<d>_<method>.safetensors`` (tensor ``generator``, rows = basis;
metadata nsm, se, method, dim, seed, parts, glue_index_bits).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from llvq.lattices.design import LatticeParametrization, lr_at, nsm_loss, precise_nsm, save_designed

__all__ = ["LatticeDesignModule"]

log = logging.getLogger("llvq")


class LatticeDesignModule(L.LightningModule):
    """SGD search for a low-NSM lattice.

    Args:
        dim: lattice dimension ``n >= 1``.
        method: ``free``, ``splice``, ``householder`` or ``matrix_exp``.
        parts: spliced lattices (dimensions, names or generator files); ``None`` = the best pair
            (:func:`~llvq.lattices.design.auto_parts`).
        reflections: Householder vectors (default ``n`` rounded up to even).
        init: ``free`` only: ``"random"`` or ``"splice"``.
        batch_size: uniform samples per step.
        lr: initial SGD step size; ``anneal``: annealing time in steps (``<= 0``: constant).
        momentum: SGD momentum.
        reduce_every: LLL-reduce the ``free`` basis (or rebase a fusion, with ``rebase``) every
            this many steps (0 = never).
        rebase: fusion only: at each reduction, ``base <- LLL(Q base)`` and ``Q <- I``
            (:class:`~llvq.lattices.design.LatticeParametrization`).
        seed: seeds the initial parameters, the glue search and the samples.
        glue: start from the densest glued superlattice of the parts (a discrete search,
            :mod:`llvq.lattices.glue`) instead of their orthogonal splice.
        glue_trials: restarts of the glue search.
        eval_samples: samples of the final NSM estimate (``fast_dev_run`` uses at most 2,000).
        steps_per_epoch: length of the dummy dataloader (one epoch).
        output_dir: where the generator file goes (``None``: the trainer's ``default_root_dir``).
    """

    def __init__(self, dim: int, method: str = "householder", parts: Sequence[int | str] | None = None,
                 reflections: int | None = None, init: str = "random", batch_size: int = 1024,
                 lr: float = 0.5, anneal: float = 500.0, momentum: float = 0.0,
                 reduce_every: int = 100, rebase: bool = False, seed: int = 0,
                 glue: bool = False, glue_trials: int = 8, eval_samples: int = 200_000,
                 steps_per_epoch: int = 1000, output_dir: str | None = None) -> None:
        super().__init__()
        for key, value, low in (("batch_size", batch_size, 1), ("eval_samples", eval_samples, 2),
                                ("steps_per_epoch", steps_per_epoch, 1)):
            if int(value) < low:
                raise ValueError(f"lattice.{key} must be >= {low}, got {value}")
        if lr <= 0:
            raise ValueError(f"lattice.lr must be > 0, got {lr}")
        parts = list(parts) if parts is not None else None
        self.save_hyperparameters()
        self.automatic_optimization = False
        if glue:
            log.info("glue search over %s (%d restarts; about 30 s in dimension 22)",
                     " + ".join(map(str, parts)) if parts else "the default parts", glue_trials)
        self.lattice = LatticeParametrization(dim, method, parts, reflections, init, rebase=rebase,
                                              seed=seed, glue=glue, glue_trials=glue_trials)
        if not list(self.lattice.parameters()):
            # nothing to learn (splice): an empty parameter gives the run an optimizer whose step
            # counts the steps, so trainer.max_steps ends it as it ends the fusions
            self.step_counter = torch.nn.Parameter(torch.zeros(0, dtype=torch.float64))
        if glue:
            log.info("glued lattice: index 2^%d over the direct sum", self.lattice.glue_index_bits)
        self.final: dict[str, Any] = {}

    def train_dataloader(self) -> list[int]:
        """Step indices; the samples are drawn in :meth:`training_step` from the seeded RNG."""
        return list(range(self.hparams.steps_per_epoch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # splice: only the empty step counter, the steps only estimate the NSM
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)

    def generator(self) -> Tensor:
        """The current unit-volume generator (float64, rows = basis), detached."""
        return self.lattice().detach()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        hp, t = self.hparams, self.global_step
        rng = torch.Generator().manual_seed(hp.seed * 1_000_003 + t)
        u = torch.rand(hp.batch_size, self.lattice.dim, generator=rng, dtype=torch.float64)
        loss = nsm_loss(self.lattice(), u)
        lr = lr_at(t, hp.lr, hp.anneal)
        opt = self.optimizers()
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        if loss.requires_grad:
            self.manual_backward(loss)
        opt.step()  # also for splice: the optimizer step is what advances trainer.global_step
        if self.lattice.method != "splice":
            self.lattice.normalize_()
            if hp.reduce_every > 0 and (t + 1) % hp.reduce_every == 0:
                self.lattice.reduce_()
        self.log("train/nsm", loss.detach().float(), on_step=True, prog_bar=True, batch_size=1)
        self.log("train/lr", lr, on_step=True, batch_size=1)
        return loss.detach()

    def on_train_end(self) -> None:
        self._finish()

    @rank_zero_only
    def _finish(self) -> None:
        hp = self.hparams
        samples = min(hp.eval_samples, 2000) if self.trainer.fast_dev_run else hp.eval_samples
        g = self.generator()
        value, se = precise_nsm(g, samples, seed=hp.seed + 1_000_003)
        out = Path(hp.output_dir or self.trainer.default_root_dir)
        path = out / f"lattice_dim{self.lattice.dim}_{self.lattice.method}.safetensors"
        save_designed(path, g, nsm=value, se=se, method=self.lattice.method, dim=self.lattice.dim,
                      seed=hp.seed, parts=self.lattice.parts, steps=self.global_step,
                      samples=samples, glue_index_bits=self.lattice.glue_index_bits)
        self.final = {"nsm": value, "se": se, "path": str(path)}
        for lg in self.loggers:
            lg.log_metrics({"final/nsm": value, "final/nsm_se": se}, step=self.global_step)
            lg.save()
        log.info("lattice dim=%d method=%s: NSM = %.6f ± %.1e (%d samples) after %d steps",
                 self.lattice.dim, self.lattice.method, value, se, samples, self.global_step)
        log.info("generator saved: %s   use it with: model/quantizer=lattice "
                 "model.quantizer.generator=%s", path, path)

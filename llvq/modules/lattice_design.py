"""Lattice design through the trainer: every training step is one SGD batch on the NSM.

``python train.py experiment=lattice_design lattice.dim=13 lattice.method=householder``

A :class:`~llvq.modules.step_job.StepJob`: one unit of work is one
:class:`~llvq.lattices.design.DesignStep`, the same step :func:`~llvq.lattices.design.design_lattice`
and ``bench/lattice_design.py`` run, so the same settings and seed give the same lattice. The
module owns a :class:`~llvq.lattices.design.LatticeParametrization` (free lower-triangular,
splice, Householder or matrix-exponential fusion) built from a
:class:`~llvq.lattices.design.DesignConfig` (the ``lattice:`` node of the experiment). Each step:
``u ~ U[0,1)^n`` from the seed ``(seed, t)`` (a resumed run draws what the uninterrupted one
would), exact closest point, NSM loss (Agrell & Eriksson 1998, eq. 11-13), one SGD step with the
annealed size ``lr / (1 + t / anneal)``, renormalise to unit volume, and every ``reduce_every``
steps an LLL reduction. The fusions' SGD is a real optimizer returned from
``configure_optimizers``; ``splice`` has nothing to learn and runs without one (its steps only
estimate the NSM, and still count towards ``trainer.max_steps``). At the end (rank zero) the
precise NSM ± s.e. is estimated and the generator is written to
``<output_dir>/lattice_dim<d>_<method>.safetensors`` (tensor ``generator``, rows = basis;
metadata nsm, se, method, dim, seed, parts, glue_index_bits).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from llvq.lattices.design import DesignConfig, DesignStep, final_nsm, save_designed
from llvq.modules.step_job import StepJob

__all__ = ["LatticeDesignModule"]

log = logging.getLogger("llvq")


class LatticeDesignModule(StepJob):
    """SGD search for a low-NSM lattice.

    Args:
        lattice: the design settings, a :class:`~llvq.lattices.design.DesignConfig` or a mapping
            of its fields (the experiment's ``lattice:`` node: ``dim``, ``method``, ``parts``,
            ``glue``, ``lr``, ...); an unknown key is an error naming ``lattice.<key>``.
        steps_per_epoch: design steps per epoch (checkpoints and epoch ends).
        output_dir: where the generator file goes (``None``: the trainer's ``default_root_dir``).
    """

    def __init__(self, lattice: DesignConfig | Mapping[str, Any], steps_per_epoch: int = 1000,
                 output_dir: str | None = None) -> None:
        super().__init__()
        if isinstance(lattice, DictConfig):
            lattice = OmegaConf.to_container(lattice, resolve=True)  # type: ignore[assignment]
        config = DesignConfig.from_settings(lattice)  # type: ignore[arg-type]
        if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"model.steps_per_epoch must be an integer >= 1, got {steps_per_epoch!r}")
        # plain values only, so a checkpoint rebuilds the module: cls(**hparams)
        self.save_hyperparameters({"lattice": config.to_dict(), "steps_per_epoch": steps_per_epoch,
                                   "output_dir": output_dir})
        self.config = config
        if config.glue:
            log.info("glue search over %s (%d restarts; about 30 s in dimension 22)",
                     " + ".join(map(str, config.parts)) if config.parts else "the default parts",
                     config.glue_trials)
        self.lattice = config.parametrization()
        if config.glue:
            log.info("glued lattice: index 2^%d over the direct sum", self.lattice.glue_index_bits)
        self.design_step = DesignStep(self.lattice, config)
        self.final: dict[str, Any] = {}

    def units_per_epoch(self) -> int:
        return self.hparams.steps_per_epoch

    def configure_optimizers(self) -> Any:
        """The fusions' (and ``free``'s) SGD; none for ``splice``."""
        optimizer = self.design_step.optimizer()
        return optimizer if optimizer is not None else []

    def generator(self) -> Tensor:
        """The current unit-volume generator (float64, rows = basis), detached."""
        return self.lattice().detach()

    def run_unit(self, index: int) -> Tensor:
        t = self.global_step
        optimizer = self.optimizers() if self.design_step.trainable else None
        loss = self.design_step(t, optimizer, backward=self.manual_backward)
        self.log("train/nsm", loss.float(), on_step=True, prog_bar=True, batch_size=1)
        self.log("train/lr", self.design_step.lr(t), on_step=True, batch_size=1)
        return loss

    def on_train_end(self) -> None:
        self._finish()

    @rank_zero_only
    def _finish(self) -> None:
        cfg, hp = self.config, self.hparams
        samples = min(cfg.eval_samples, 2000) if self.trainer.fast_dev_run else cfg.eval_samples
        g = self.generator()
        value, se = final_nsm(g, cfg, samples)
        out = Path(hp.output_dir or self.trainer.default_root_dir)
        path = out / f"lattice_dim{cfg.dim}_{cfg.method}.safetensors"
        save_designed(path, g, nsm=value, se=se, method=cfg.method, dim=cfg.dim,
                      seed=cfg.seed, parts=self.lattice.parts, steps=self.global_step,
                      samples=samples, glue_index_bits=self.lattice.glue_index_bits)
        self.final = {"nsm": value, "se": se, "path": str(path)}
        for lg in self.loggers:
            lg.log_metrics({"final/nsm": value, "final/nsm_se": se}, step=self.global_step)
            lg.save()
        log.info("lattice dim=%d method=%s: NSM = %.6f ± %.1e (%d samples) after %d steps",
                 cfg.dim, cfg.method, value, se, samples, self.global_step)
        log.info("generator saved: %s   use it with: model/quantizer=lattice "
                 "model.quantizer.generator=%s", path, path)

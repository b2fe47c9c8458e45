"""One base for jobs whose unit of work is not an SGD step: a federated round, an LLM block,
a lattice-design step.

A :class:`StepJob` is a plain ``LightningModule`` with ``automatic_optimization = False``.
Its ``train_dataloader`` yields unit indices ``0 .. units_per_epoch() - 1``; each
``training_step`` calls :meth:`StepJob.run_unit` once and then counts the step, so
``trainer.global_step`` counts units, ``trainer.max_steps`` ends a run, and checkpoints, resume,
loggers and progress bars work as for training. There is no fake parameter and no lr-0
optimizer: a job that has a real optimizer (the lattice fusions' SGD) returns it from
``configure_optimizers`` and steps it in ``run_unit``; a job without one returns nothing.

Under DDP every rank runs every unit and the job synchronises what it shares itself (the
federated clients' sums, the LLM blocks' groups): the module is not wrapped in
``DistributedDataParallel``, which would need a trainable parameter and a backward pass.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import lightning as L
from lightning.pytorch.strategies import DDPStrategy

__all__ = ["StepJob"]


class StepJob(L.LightningModule):
    """Base of the optimizer-free jobs; subclasses implement :meth:`units_per_epoch` and
    :meth:`run_unit`."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    @abstractmethod
    def units_per_epoch(self) -> int:
        """How many units one epoch holds (a round per epoch, all blocks, design steps)."""

    @abstractmethod
    def run_unit(self, index: int) -> Any:
        """Do unit ``index`` of the current epoch (``self.global_step`` units are done)."""

    # -- Lightning plumbing ----------------------------------------------------------------------
    def train_dataloader(self) -> list[int]:
        """Unit indices of one epoch (the same on every rank: units are not sharded by Lightning)."""
        return list(range(int(self.units_per_epoch())))

    def configure_optimizers(self) -> Any:
        """No optimizer by default; a job with real parameters returns its own."""
        return []

    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, DDPStrategy):
            # every rank runs every unit and all-reduces what it shares: nothing to wrap
            strategy.configure_ddp = lambda: None  # type: ignore[method-assign]

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        before = progress.total.completed
        out = self.run_unit(int(batch))
        if progress.total.completed == before:  # no optimizer stepped: count the unit ourselves
            progress.increment_ready()
            progress.increment_completed()
        return out

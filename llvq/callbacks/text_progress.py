"""Progress lines for log files, and the factory that picks Rich or lines.

``configs/callbacks/rich_progress_bar.yaml`` targets :func:`progress_bar`: on a terminal it is
Lightning's ``RichProgressBar``; when stdout is a file or a pipe (``nohup``, SLURM, CI) it is
:class:`LineProgress`, which logs one plain line every ``every`` seconds (default 30 s,
``LLVQ_PROGRESS_EVERY``) and one at the end of each validation::

    [llvq][INFO] - epoch 3/16 step 412/2048 (20%) 5.1 it/s, 5m21s left | train/loss=-301 ...

The lines go through the ``llvq`` logger, so they also land in the run's log file.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress import ProgressBar

from llvq.progress import every_seconds, format_duration, interactive

__all__ = ["LineProgress", "progress_bar"]

log = logging.getLogger("llvq")


def progress_bar(every: float | None = None, metrics: int = 4) -> ProgressBar:
    """Rich's progress bar on a terminal, :class:`LineProgress` otherwise."""
    if interactive():
        return RichProgressBar()
    return LineProgress(every=every, metrics=metrics)


class LineProgress(ProgressBar):
    """A progress 'bar' of timed log lines.

    Args:
        every: seconds between two lines (``None``: ``$LLVQ_PROGRESS_EVERY`` or 30).
        metrics: how many of the progress-bar metrics to show on a line.
    """

    def __init__(self, every: float | None = None, metrics: int = 4) -> None:
        super().__init__()
        self.every = every_seconds() if every is None else float(every)
        if self.every < 0:
            raise ValueError(f"callbacks.rich_progress_bar.every must be >= 0, got {every}")
        self.metrics = int(metrics)
        self._enabled = True
        self._start = self._last = 0.0
        self._start_step = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _total_steps(self, trainer: L.Trainer) -> int | None:
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        per_epoch = trainer.num_training_batches
        if trainer.max_epochs and trainer.max_epochs > 0 and per_epoch != float("inf"):
            return int(per_epoch) * int(trainer.max_epochs)
        return None

    def _metrics_text(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        shown = []
        for key, value in self.get_metrics(trainer, pl_module).items():
            if key == "v_num" or len(shown) >= self.metrics:
                continue
            shown.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
        return (" | " + " ".join(shown)) if shown else ""

    def _line(self, trainer: L.Trainer, pl_module: L.LightningModule, what: str) -> str:
        now = time.monotonic()
        step, total = trainer.global_step, self._total_steps(trainer)
        done = step - self._start_step
        rate = done / (now - self._start) if now > self._start else 0.0
        where = f"step {step}/{total} ({100 * step / total:.0f}%)" if total else f"step {step}"
        eta = ""
        if total and rate > 0:
            eta = f", {format_duration((total - step) / rate)} left"
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        return (f"{what}epoch {trainer.current_epoch}{epochs} {where} {rate:.3g} it/s{eta}"
                f"{self._metrics_text(trainer, pl_module)}")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self._start_step = trainer.global_step
        if self._enabled and trainer.is_global_zero:
            total = self._total_steps(trainer)
            log.info("training: %s steps from step %d (progress every %s)",
                     total if total is not None else "?", trainer.global_step,
                     format_duration(self.every))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.monotonic()
        if self._enabled and trainer.is_global_zero and now - self._last >= self.every:
            self._last = now
            log.info("%s", self._line(trainer, pl_module, ""))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero and not trainer.sanity_checking:
            log.info("%s", self._line(trainer, pl_module, "validated: "))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero:
            log.info("training done in %s: %s", format_duration(time.monotonic() - self._start),
                     self._line(trainer, pl_module, ""))

"""The resumable checkpoint: ``<run>/checkpoints/last.ckpt`` every few steps and on SIGTERM/SIGINT.

Lightning's ``ModelCheckpoint`` (``configs/callbacks/model_checkpoint.yaml``) keeps the best
and the last checkpoint at epoch ends. This callback adds the state a killed run needs:

- every ``every_n_steps`` optimizer steps (units for step jobs) and every ``every_n_minutes``
  minutes of training, ``last.ckpt`` is rewritten (atomically, by the runner's
  :class:`~llvq.checkpoints.AtomicCheckpointIO`), so a SIGKILL loses at most that much work;
- on SIGTERM (``docker stop``, SLURM, ``kill``) or SIGINT (Ctrl-C) the current step finishes,
  ``last.ckpt`` is written, the resume command is logged and the process exits with
  128 + signal (143 / 130), so job scripts see that the run did not finish. A second Ctrl-C
  interrupts at once, without a checkpoint.

Every checkpoint is saved after a whole training step, so it resumes exactly
(``docs/reliability.md``). Under DDP the decision to save is agreed across ranks.
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["ResumeCheckpoint", "resume_command"]

log = logging.getLogger("llvq")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def resume_command(ckpt: str | Path) -> str:
    """``python train.py <this run's overrides> ckpt_path=<ckpt>`` (Hydra's overrides when known)."""
    overrides = ["<same overrides>"]
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            overrides = [o for o in HydraConfig.get().overrides.task
                         if not o.lstrip("+~").startswith("ckpt_path=")]
    except (ImportError, ValueError):  # pragma: no cover - outside a Hydra run
        pass
    return shlex.join(["python", "train.py", *overrides, f"ckpt_path={ckpt}"])


def _chained(previous: Any) -> list[Any]:
    """The handlers to call after ours: ``previous`` less Lightning's SIGTERM notifier."""
    handlers = getattr(previous, "signal_handlers", None)  # Lightning's _HandlersCompose
    if handlers is None:
        return [previous] if callable(previous) else []
    out = []
    for handler in handlers:
        if getattr(handler, "__name__", "") == "_sigterm_notifier_fn":
            continue
        if isinstance(handler, int):
            handler = signal.getsignal(handler)
        out.extend(_chained(handler))
    return out


class ResumeCheckpoint(Callback):
    """Rewrites ``dirpath/filename.ckpt`` every N steps / M minutes and on SIGTERM or SIGINT.

    Args:
        dirpath: the checkpoint folder (``${paths.output_dir}/checkpoints``).
        filename: the file's stem (``last``: the same file ``ModelCheckpoint`` keeps at epoch
            ends, so ``last.ckpt`` is always the newest state).
        every_n_steps: save after every N-th step (``trainer.global_step``); null = off.
        every_n_minutes: save when this many minutes passed since the last save; null = off.
        on_signal: catch SIGTERM and SIGINT (checkpoint, resume hint, exit 143 / 130).
    """

    def __init__(self, dirpath: str | Path, filename: str = "last", every_n_steps: int | None = 50,
                 every_n_minutes: float | None = 10.0, on_signal: bool = True) -> None:
        for setting, value in (("every_n_steps", every_n_steps),
                               ("every_n_minutes", every_n_minutes)):
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"callbacks.resume_checkpoint.{setting} must be a positive "
                                 f"number or null (off), got {value!r}")
        if every_n_steps is not None and not isinstance(every_n_steps, int):
            raise ValueError("callbacks.resume_checkpoint.every_n_steps must be an integer, got "
                             f"{every_n_steps!r}")
        self.dirpath = Path(dirpath)
        self.filename = filename
        self.every_n_steps = every_n_steps
        self.every_n_minutes = every_n_minutes
        self.on_signal = on_signal
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._last_save = time.monotonic()

    @property
    def path(self) -> Path:
        return self.dirpath / f"{self.filename}.ckpt"

    # -- signals ---------------------------------------------------------------------------------
    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.received = signum
        log.warning("received %s: finishing the current step, then saving %s",
                    signal.Signals(signum).name, self.path)
        if signum != signal.SIGINT:
            for handler in _chained(self._previous.get(signum)):
                handler(signum, frame)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received = None
        self._last_save = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning's own SIGTERM handler is in place (it is registered once the
        # checkpoint is restored): Lightning's teardown then gives back the handlers of before
        # the fit, and ours replaces its notifier, which would raise a SIGTERMException (exit
        # code 0, no checkpoint) in the middle of a validation
        self._last_save = time.monotonic()
        self._install()

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def _install(self) -> None:
        if not self.on_signal or self._previous:
            return
        try:
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handler)
        except ValueError:  # not the main thread: signals cannot be caught here
            log.info("ResumeCheckpoint: not in the main thread, SIGTERM/SIGINT are not caught")

    def _restore_handlers(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        # Lightning calls no `teardown` hook when fit raises (a failed save, our SystemExit):
        # give the handlers back here, or a later run in this process would chain to this one
        self._restore_handlers()

    # -- saving ----------------------------------------------------------------------------------
    def _decide(self, trainer: L.Trainer, step_end: bool) -> tuple[bool, bool]:
        """``(signal received on any rank, a periodic save is due)``, the same on every rank."""
        due = False
        if step_end:
            step = trainer.global_step
            due = bool(self.every_n_steps and step > 0 and step % self.every_n_steps == 0)
            due |= bool(self.every_n_minutes
                        and time.monotonic() - self._last_save >= 60 * self.every_n_minutes)
        flags = [self.received is not None, due]
        if trainer.world_size > 1:
            t = torch.tensor(flags, dtype=torch.float32, device=trainer.strategy.root_device)
            t = trainer.strategy.reduce(t, reduce_op="max")
            flags = [bool(v) for v in t.tolist()]
        return flags[0], flags[1]

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        self._last_save = time.monotonic()

    def _act(self, trainer: L.Trainer, step_end: bool) -> None:
        if trainer.sanity_checking:
            return
        if step_end and trainer.fit_loop._should_accumulate():
            return  # mid gradient accumulation: the accumulated gradients are in no checkpoint
        stop, due = self._decide(trainer, step_end)
        skip = bool(trainer.fast_dev_run)
        if stop:
            signum = self.received or signal.SIGTERM
            if not skip:
                self._save(trainer)
            if trainer.is_global_zero:
                name = signal.Signals(signum).name
                if skip:
                    log.warning("%s: stopped (fast_dev_run writes no checkpoint)", name)
                else:
                    log.warning("%s: saved %s at step %d; resume with:\n  %s", name, self.path,
                                trainer.global_step, resume_command(self.path))
            sys.stdout.flush()
            raise SystemExit(128 + int(signum))
        if due and not skip:
            self._save(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._act(trainer, step_end=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._act(trainer, step_end=False)  # a signal during the epoch-end validation

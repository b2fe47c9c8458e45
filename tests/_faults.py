"""Fault injection for the reliability tests: callbacks that kill or signal the run itself."""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable

import lightning as L


class KillAt(L.Callback):
    """Sends ``signum`` (default SIGKILL) to this process when step ``step`` is about to start."""

    def __init__(self, step: int, signum: int = int(signal.SIGKILL)) -> None:
        self.step = step
        self.signum = signum

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class SignalInValidation(L.Callback):
    """Sends ``signum`` to this process when the first validation batch (not the sanity
    check's) starts."""

    def __init__(self, signum: int = int(signal.SIGTERM)) -> None:
        self.signum = signum
        self.sent = False

    def on_validation_batch_start(self, trainer: L.Trainer, *args: object, **kwargs: object
                                  ) -> None:
        if not trainer.sanity_checking and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class _HalfWrite:
    """A binary file that writes half of what it is given, then fails as a full disk does."""

    def __init__(self, file: object) -> None:
        self.file = file

    def __enter__(self) -> _HalfWrite:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()  # type: ignore[attr-defined]

    def write(self, data: bytes) -> int:
        self.file.write(data[: len(data) // 2])  # type: ignore[attr-defined]
        self.file.flush()  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> object:
        return getattr(self.file, name)


def failing_open(after: int, opened: list[str]) -> Callable[..., object]:
    """An ``open`` whose writes after the first ``after`` fail half-way (a full disk).

    Installed as ``llvq.checkpoints.open`` (the ``open`` that
    :func:`llvq.checkpoints.atomic_write` uses); ``opened`` collects the paths opened for
    writing.
    """
    import builtins

    def fake_open(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        handle = builtins.open(file, mode, *args, **kwargs)  # type: ignore[call-overload]  # noqa: SIM115
        if "w" not in mode:
            return handle
        opened.append(str(file))
        return handle if len(opened) <= after else _HalfWrite(handle)

    return fake_open


class FailSavesAfter(L.Callback):
    """In a subprocess run: checkpoint writes after the first ``after`` fail half-way."""

    def __init__(self, after: int) -> None:
        self.after = after

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        import llvq.checkpoints

        llvq.checkpoints.open = failing_open(self.after, [])  # type: ignore[attr-defined]

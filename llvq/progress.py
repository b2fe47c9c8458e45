"""Progress that reaches log files: a Rich bar on a terminal, plain timed lines elsewhere.

Under ``nohup``, SLURM or CI stdout is not a terminal and a Rich bar prints only when it ends.
:func:`track` (for loops outside the trainer: export, sampling, benches) and
:class:`LineProgress` (the trainer's progress bar, :mod:`llvq.callbacks.text_progress`) print
one line every ``every`` seconds instead: what is done, the rate, the time left.

This module imports nothing from llvq.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["format_duration", "interactive", "track"]

T = TypeVar("T")

log = logging.getLogger("llvq")

#: seconds between two plain progress lines (``LLVQ_PROGRESS_EVERY`` overrides it).
DEFAULT_EVERY = 30.0


def interactive() -> bool:
    """True when stdout is a terminal (and ``LLVQ_PLAIN_PROGRESS`` is not set)."""
    if os.environ.get("LLVQ_PLAIN_PROGRESS"):
        return False
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # closed or replaced stdout
        return False


def every_seconds(default: float = DEFAULT_EVERY) -> float:
    """The interval of plain progress lines: ``$LLVQ_PROGRESS_EVERY`` or ``default``."""
    value = os.environ.get("LLVQ_PROGRESS_EVERY")
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError as err:
        raise ValueError(f"LLVQ_PROGRESS_EVERY must be a number of seconds, got {value!r}") from err
    if seconds < 0:
        raise ValueError(f"LLVQ_PROGRESS_EVERY must be >= 0 seconds, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``3h05m``, ``4m12s`` or ``9s``."""
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def track(items: Iterable[T], description: str, total: int | None = None,
          disable: bool = False, every: float | None = None) -> Iterator[T]:
    """Iterate ``items`` with progress: Rich's bar on a terminal, timed log lines otherwise.

    Args:
        items: what to iterate.
        description: what is being done (``"encoding"``).
        total: number of items when ``items`` has no ``len``.
        disable: no progress at all.
        every: seconds between plain lines (default :func:`every_seconds`).
    """
    if disable:
        yield from items
        return
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if interactive():
        from rich.progress import track as rich_track  # only on a terminal

        yield from rich_track(items, description=description, total=total)
        return
    every = every_seconds() if every is None else every
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every:
            last = now
            log.info("%s", progress_line(description, done, total, now - start))
    log.info("%s", progress_line(description, done, total, time.monotonic() - start, final=True))


def progress_line(what: str, done: int, total: int | None, elapsed: float,
                  final: bool = False) -> str:
    """``encoding: 120/512 (23%), 4.1 it/s, 1m35s left``."""
    rate = done / elapsed if elapsed > 0 else 0.0
    if final:
        return f"{what}: {done} done in {format_duration(elapsed)} ({rate:.3g} it/s)"
    if total:
        left = (total - done) / rate if rate > 0 else float("nan")
        eta = format_duration(left) if math.isfinite(left) else "?"
        return f"{what}: {done}/{total} ({100 * done / total:.0f}%), {rate:.3g} it/s, {eta} left"
    return f"{what}: {done}, {rate:.3g} it/s, {format_duration(elapsed)} elapsed"

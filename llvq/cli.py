"""Console scripts. ``llvq-train`` is ``python train.py`` usable from any directory.

Both print an error that llvq raised on purpose (a bad setting, a missing file, a damaged
checkpoint: an exception raised by a ``raise`` statement inside the llvq package) as one line,
``error: <message>``, and exit 1; ``LLVQ_TRACEBACK=1`` shows the traceback instead. Anything
else (a bug, an error inside torch or Lightning) keeps its traceback. Hydra's wrapper around
an error raised while instantiating a config is unwrapped to its cause first.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["config_dir", "deliberate", "one_line_errors", "train_main"]

_PACKAGE = Path(__file__).resolve().parent


def _root_cause(err: BaseException) -> BaseException:
    """``err`` without Hydra's ``InstantiationException`` wrappers (their ``__cause__`` chain)."""
    while type(err).__name__ == "InstantiationException" and err.__cause__ is not None:
        err = err.__cause__
    return err


def deliberate(err: BaseException) -> bool:
    """Whether llvq raised ``err`` on purpose: its innermost frame is a ``raise`` statement in
    the llvq package (a check with a message for the user, not a bug or a library's error)."""
    if not isinstance(err, Exception) or isinstance(err, AssertionError) \
            or err.__traceback__ is None:
        return False
    frame = traceback.extract_tb(err.__traceback__)[-1]
    try:
        inside = Path(frame.filename).resolve().is_relative_to(_PACKAGE)
    except OSError:
        return False
    return inside and (frame.line or "").lstrip().startswith("raise")


@contextmanager
def one_line_errors(prefix: str = "error") -> Iterator[None]:
    """Turn an error llvq raised on purpose into ``<prefix>: <message>`` on stderr and exit 1.

    Other exceptions, ``SystemExit`` (the 143 / 130 of a signal) and everything with
    ``LLVQ_TRACEBACK=1`` in the environment pass through unchanged.
    """
    try:
        yield
    except Exception as err:
        root = _root_cause(err)
        if os.environ.get("LLVQ_TRACEBACK") or not deliberate(root):
            raise
        print(f"{prefix}: {root}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def config_dir() -> Path:
    """The Hydra config directory: ``$LLVQ_CONFIG_DIR``, ``./configs``, or the source checkout's."""
    candidates = [os.environ.get("LLVQ_CONFIG_DIR"), Path.cwd() / "configs",
                  Path(__file__).resolve().parents[1] / "configs"]
    for cand in candidates:
        if cand and (Path(cand) / "train.yaml").is_file():
            return Path(cand).resolve()
    raise FileNotFoundError("no Hydra configs found: set LLVQ_CONFIG_DIR to a folder holding "
                            "train.yaml, or run from the llvq source checkout")


def train_main() -> None:
    """Entry point of ``llvq-train``: ``@hydra.main`` over :func:`llvq.run`."""
    import hydra
    from omegaconf import DictConfig

    from llvq.plugins import load_plugins
    from llvq.quiet import quiet_known_noise
    from llvq.runner import metric_value, run

    quiet_known_noise()
    with one_line_errors():
        load_plugins()

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
    def _main(cfg: DictConfig) -> float | None:
        quiet_known_noise()  # again, now that Hydra configured logging
        with one_line_errors():
            return metric_value(run(cfg), cfg.get("optimized_metric"))

    _main()

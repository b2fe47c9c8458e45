"""Silence the third-party messages a user cannot act on, each where it comes from.

- torch 2.14 deprecates ``LeafSpec``, which Lightning 2.6 still constructs for every batch
  (``lightning.pytorch.utilities._pytree``): a ``FutureWarning`` about Lightning's own code.
- Lightning advertises a cloud logger on every run (a ``rank_zero_info`` "Tip").
- ``import lightning`` gives its logger a console handler of its own, so under Hydra (whose
  handlers sit on the root logger) every Lightning message printed twice; once the root logger
  has handlers, Lightning's own console handler is removed (its messages still propagate).

Everything else is left alone: a warning llvq's user can act on must reach them. This module
imports nothing from llvq.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_known_noise"]

_ADVERT = "💡 Tip:"


class _DropAdvert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_ADVERT)


_installed = False


def quiet_known_noise() -> None:
    """Install the filters (idempotent; call again after logging is configured)."""
    global _installed
    _dedupe_lightning_console()
    if _installed:
        return
    _installed = True
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropAdvert())


def _dedupe_lightning_console() -> None:
    root = logging.getLogger()
    if not root.handlers:
        return
    lightning = logging.getLogger("lightning")
    for handler in list(lightning.handlers):
        if type(handler) is logging.StreamHandler:
            lightning.removeHandler(handler)

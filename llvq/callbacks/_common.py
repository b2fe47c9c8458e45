"""Helpers shared by the llvq callbacks: what a module offers, where TensorBoard is."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from llvq.quantizers.base import Quantizer

__all__ = ["batch_images", "log", "quantizer_of", "tensorboard"]

log = logging.getLogger("llvq")


def batch_images(batch: Any) -> Tensor:
    """The images ``x`` of an ``(x, y)`` batch (or the batch itself)."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def quantizer_of(pl_module: L.LightningModule) -> Quantizer | None:
    """The module's bottleneck if it offers the codes contract (``encode``/``decode``), else None."""
    q = getattr(pl_module, "quantizer", None)
    if isinstance(q, Quantizer) and callable(getattr(pl_module, "encode", None)) \
            and callable(getattr(pl_module, "decode", None)):
        return q
    return None


def tensorboard(trainer: L.Trainer) -> Any | None:
    """The ``SummaryWriter`` of the trainer's first TensorBoard logger, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None

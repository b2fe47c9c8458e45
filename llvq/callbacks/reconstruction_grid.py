"""Input / reconstruction image grids to TensorBoard after each validation epoch (rank zero).

The reconstruction is ``decode(encode(x))`` — exactly what the exported codes decode to — of
the first ``num_images`` images of the first validation batch. Row 1 of the grid holds the
inputs, row 2 their reconstructions.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchvision.utils import make_grid

from llvq.callbacks._common import batch_images, log, quantizer_of, tensorboard

__all__ = ["ReconstructionGrid"]


class ReconstructionGrid(Callback):
    """Logs ``inputs | reconstructions`` of the first validation batch as one image.

    Args:
        num_images: images per row (at most the validation batch size).
        every_n_epochs: log every this many validation epochs.
        tag: TensorBoard image tag.
    """

    def __init__(self, num_images: int = 8, every_n_epochs: int = 1,
                 tag: str = "val/reconstructions") -> None:
        if num_images < 1 or every_n_epochs < 1:
            raise ValueError("callbacks.reconstruction_grid: num_images and every_n_epochs must "
                             f"be >= 1, got {num_images} and {every_n_epochs}")
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.tag = tag
        self._grid: Tensor | None = None
        self._skipped = False

    def _active(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return False
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return False
        if quantizer_of(pl_module) is None or tensorboard(trainer) is None:
            if not self._skipped:
                self._skipped = True
                log.info("ReconstructionGrid: needs a module with encode()/decode() and a "
                         "TensorBoard logger; skipped")
            return False
        return True

    @torch.no_grad()
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or not self._active(trainer, pl_module):
            return
        x = batch_images(batch)[: self.num_images]  # (n, C, H, W)
        x_hat = pl_module.decode(pl_module.encode(x)).clamp(0.0, 1.0)  # (n, C, H, W)
        self._grid = make_grid(torch.cat([x, x_hat]).float().cpu(), nrow=x.shape[0], padding=2,
                               pad_value=1.0)  # (3, 2H+6, nW+2n+2)

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._grid is None:
            return
        writer = tensorboard(trainer)
        if writer is not None:
            writer.add_image(self.tag, self._grid, global_step=trainer.global_step)
        self._grid = None

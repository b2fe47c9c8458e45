"""A small image classifier (``model=classifier``): the digits model of the QAT experiments.

``DigitsNet`` for 8×8 inputs: conv 3×3 (C→16) → ReLU → conv 3×3 stride 2 (16→32) → ReLU →
flatten (32·4·4 = 512) → linear 512→64 → ReLU → linear 64→10. Every layer's input width (1,
16, 512, 64) is a power of two, so the Hadamard pre-transform of :mod:`llvq.qat` applies to all
of them. Logged: ``{train,val,test}/loss`` and ``/acc``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llvq.modules._build import positive_number

__all__ = ["ClassifierModule", "DigitsNet"]


class DigitsNet(nn.Sequential):
    """The 8×8 digits CNN (``in_channels`` → 10 classes)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 8) -> None:
        side = (image_size + 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * side * side, 64), nn.ReLU(), nn.Linear(64, num_classes))


class ClassifierModule(L.LightningModule):
    """Cross-entropy training of :class:`DigitsNet` with AdamW.

    Args:
        in_channels: image channels.
        num_classes: classes.
        image_size: square input side.
        lr: learning rate.
        weight_decay: AdamW weight decay.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 8,
                 lr: float = 3e-3, weight_decay: float = 1e-4) -> None:
        super().__init__()
        positive_number(lr, "model.lr")
        self.save_hyperparameters()
        self.net = DigitsNet(in_channels, num_classes, image_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, classes)

    def _step(self, batch: Any, stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        train = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=train, on_epoch=True, sync_dist=not train)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True,
                 sync_dist=not train)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr,
                                 weight_decay=self.hparams.weight_decay)

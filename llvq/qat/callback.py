"""``QuantizationAwareTraining``: fake quantization attached to any LightningModule by a callback.

In ``setup`` (before Lightning builds the optimizer and before a checkpoint is restored, so the
parametrized state-dict keys match on resume) it calls :func:`llvq.qat.attach_fake_quant` on the
module; during training and validation it logs the means over layers of the quantizers' metrics
(``qat/weight/mse``, ``qat/weight/mse_expected``, ``qat/input/mse``, ...).

Example (any run)::

    python train.py experiment=qat_digits callbacks.qat.weight.fit=minmax
"""

from __future__ import annotations

from typing import Any

import lightning as L
from omegaconf import DictConfig, ListConfig, OmegaConf

from llvq.qat.fake_quant import attach_fake_quant, fake_quant_layers, quantization_metrics

__all__ = ["QuantizationAwareTraining"]


def _plain(x: Any) -> Any:
    return OmegaConf.to_container(x, resolve=True) if isinstance(x, DictConfig | ListConfig) else x


class QuantizationAwareTraining(L.Callback):
    """Fake-quantize the weights and inputs of the module's ``nn.Linear`` / ``nn.Conv2d`` layers.

    Args:
        weight: the weight quantizer ``{name, **options}`` (e.g. ``{name: statqat_int, bits: 4,
            fit: mse, dynamic: true}``); ``None``: weights stay full precision.
        activation: the input quantizer; ``None``: inputs stay full precision.
        hadamard: rotate both operands by a Hadamard matrix first (widths: powers of two).
        include, exclude: shell patterns on layer names.
    """

    def __init__(self, weight: dict | None = None, activation: dict | None = None,
                 hadamard: bool = False, include: list[str] | None = None,
                 exclude: list[str] | None = None) -> None:
        self.weight, self.activation = _plain(weight), _plain(activation)
        self.hadamard = bool(hadamard)
        self.include = list(_plain(include) or ["*"])
        self.exclude = list(_plain(exclude) or [])
        self.layers: list[str] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if fake_quant_layers(pl_module):
            return
        self.layers = attach_fake_quant(pl_module, self.weight, self.activation, self.hadamard,
                                        self.include, self.exclude)

    def _log(self, pl_module: L.LightningModule, on_step: bool) -> None:
        for key, value in quantization_metrics(pl_module).items():
            pl_module.log(f"qat/{key}", value, on_step=on_step, on_epoch=not on_step,
                          batch_size=1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           *args: Any) -> None:
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            self._log(pl_module, on_step=True)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(pl_module, on_step=False)

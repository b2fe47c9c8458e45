"""The client models of the OLALa experiments: linear, MLP and a small CNN, in a registry.

A model entry is a function ``(in_shape, num_classes, **options) -> nn.Module`` for ``(C, H, W)``
images; an outside package adds one with ``@MODELS.register("mine")`` (see :mod:`llvq.plugins`)
and selects it with ``model.model=mine`` (its options under ``model.model_options``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llvq.registry import Registry

__all__ = ["MODELS", "build_model"]

#: federated client models: name -> ``(in_shape, num_classes, **options) -> nn.Module``.
MODELS: Registry = Registry("federated model", setting="model.model")


@MODELS.register("linear")
def linear(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Softmax regression on the flattened image."""
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))


@MODELS.register("mlp")
def mlp(in_shape: tuple[int, int, int], num_classes: int, hidden: int = 64) -> nn.Module:
    """One hidden ReLU layer of width ``hidden``."""
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


@MODELS.register("cnn")
def cnn(in_shape: tuple[int, int, int], num_classes: int, hidden: int = 64) -> nn.Module:
    """Two 3x3 conv + ReLU + 2x2 max-pool stages (``hidden / 4`` and ``hidden / 2`` channels),
    then a linear layer."""
    c, h, w = in_shape
    ch = max(hidden // 4, 4)
    body = nn.Sequential(nn.Conv2d(c, ch, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(ch, 2 * ch, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten())
    with torch.no_grad():
        feat = body(torch.zeros(1, c, h, w)).shape[-1]
    return nn.Sequential(body, nn.Linear(feat, num_classes))


def build_model(name: str, in_shape: tuple[int, ...], num_classes: int, **options: Any) -> nn.Module:
    """The classifier registered as ``name`` for ``(C, H, W)`` images.

    Args:
        name: ``linear``, ``mlp``, ``cnn`` or a plugin's.
        in_shape: ``(C, H, W)``.
        num_classes: output classes.
        **options: the model's own options (``hidden`` for ``mlp`` and ``cnn``).

    Raises:
        llvq.registry.RegistryError: an unknown name or option (naming it).
    """
    return MODELS.build(name, tuple(in_shape), int(num_classes), **options)

"""The client models of the OLALa experiments: linear, MLP and a small CNN."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MODELS", "build_model"]

MODELS = ("linear", "mlp", "cnn")


def build_model(name: str, in_shape: tuple[int, int, int], num_classes: int, hidden: int = 64) -> nn.Module:
    """A classifier for ``(C, H, W)`` images.

    Args:
        name: ``linear`` (softmax regression), ``mlp`` (one hidden ReLU layer) or ``cnn``
            (two 3x3 conv + ReLU + 2x2 max-pool stages, then a linear layer).
        in_shape: ``(C, H, W)``.
        num_classes: output classes.
        hidden: MLP width / CNN channels of the second stage.
    """
    c, h, w = in_shape
    if name == "linear":
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(),
                             nn.Linear(hidden, num_classes))
    if name == "cnn":
        ch = max(hidden // 4, 4)
        body = nn.Sequential(nn.Conv2d(c, ch, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(ch, 2 * ch, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten())
        with torch.no_grad():
            feat = body(torch.zeros(1, c, h, w)).shape[-1]
        return nn.Sequential(body, nn.Linear(feat, num_classes))
    raise ValueError(f"unknown federated model '{name}'; choose one of {', '.join(MODELS)} "
                     f"(set model.model=...)")

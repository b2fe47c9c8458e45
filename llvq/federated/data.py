"""Whole data sets as tensors for the federated simulation: digits (embedded), MNIST, CIFAR-10.

A data set entry is a function ``(data_dir, download, seed, **options) -> (x_train, y_train,
x_test, y_test)`` with ``x`` float32 ``(N, C, H, W)`` in [0, 1] and ``y`` int64; an outside
package adds one with ``@DATASETS.register("mine")`` (see :mod:`llvq.plugins`) and selects it
with ``model.dataset=mine``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision import datasets

from llvq.data.digits import load_digit_tensors
from llvq.registry import Registry

__all__ = ["DATASETS", "load_federated_data"]

Split = tuple[Tensor, Tensor, Tensor, Tensor]

#: federated data sets: name -> ``(data_dir, download, seed, **options) -> (x, y, x_test, y_test)``.
DATASETS: Registry = Registry("federated data set", setting="model.dataset")


def _split(x: Tensor, y: Tensor, test_fraction: float, seed: int) -> Split:
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = round(len(y) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


@DATASETS.register("digits")
def digits(data_dir: str = "data", download: bool = False, seed: int = 0,
           test_fraction: float = 0.2) -> Split:
    """sklearn's 8x8 digits (embedded; nothing is read from ``data_dir``), a seeded split."""
    x, y = load_digit_tensors(1, 8)
    return _split(x, y, test_fraction, seed)


def _torchvision(name: str, cls: type, data_dir: str, download: bool) -> Split:
    try:
        parts = [cls(str(Path(data_dir)), train=train, download=download) for train in (True, False)]
    except RuntimeError as err:
        raise FileNotFoundError(f"{name} not found under {data_dir} ({err}); set model.download=true "
                                f"or model.data_dir to where it is") from None
    out: list[Tensor] = []
    for ds in parts:
        data = torch.as_tensor(ds.data)
        x = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)  # (N, C, H, W)
        out += [x.float().div(255.0), torch.as_tensor(ds.targets, dtype=torch.int64)]
    return out[0], out[1], out[2], out[3]


@DATASETS.register("mnist")
def mnist(data_dir: str = "data", download: bool = False, seed: int = 0) -> Split:
    """torchvision MNIST with its own test set."""
    return _torchvision("mnist", datasets.MNIST, data_dir, download)


@DATASETS.register("cifar10")
def cifar10(data_dir: str = "data", download: bool = False, seed: int = 0) -> Split:
    """torchvision CIFAR-10 with its own test set."""
    return _torchvision("cifar10", datasets.CIFAR10, data_dir, download)


def load_federated_data(name: str, data_dir: str = "data", download: bool = False,
                        seed: int = 0, **options: Any) -> Split:
    """``(x_train, y_train, x_test, y_test)``; ``x`` float32 ``(N, C, H, W)`` in [0, 1].

    Args:
        name: ``digits`` (sklearn's 8x8 digits, embedded; a seeded ``test_fraction`` split),
            ``mnist``, ``cifar10`` (torchvision, their own test sets) or a plugin's.
        data_dir: torchvision root.
        download: let torchvision download a missing data set.
        seed: seeds the digits split.
        **options: the data set's own options (``test_fraction`` for digits).

    Raises:
        llvq.registry.RegistryError: an unknown name or option (naming it).
    """
    return DATASETS.build(name, data_dir=data_dir, download=download, seed=seed, **options)

"""Whole data sets as tensors for the federated simulation: digits (embedded), MNIST, CIFAR-10."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

__all__ = ["DATASETS", "load_federated_data"]

DATASETS = ("digits", "mnist", "cifar10")


def _split(x: Tensor, y: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = round(len(y) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def load_federated_data(name: str, data_dir: str = "data", download: bool = False,
                        seed: int = 0, test_fraction: float = 0.2) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)``; ``x`` float32 ``(N, C, H, W)`` in [0, 1].

    Args:
        name: ``digits`` (sklearn's 8x8 digits, embedded; a seeded ``test_fraction`` split),
            ``mnist`` or ``cifar10`` (torchvision, their own test sets).
        data_dir: torchvision root.
        download: let torchvision download a missing data set.
        seed: seeds the digits split.
        test_fraction: digits only.
    """
    if name == "digits":
        from llvq.data.digits import load_digit_tensors

        x, y = load_digit_tensors(1, 8)
        return _split(x, y, test_fraction, seed)
    if name not in DATASETS:
        raise ValueError(f"unknown federated data set '{name}'; choose one of {', '.join(DATASETS)} "
                         f"(set model.dataset=...)")
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.CIFAR10
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

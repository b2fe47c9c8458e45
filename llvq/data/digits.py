"""The handwritten digits bundled with scikit-learn (UCI optdigits test set).

1,797 labelled 8x8 gray images with values 0..16, scaled here to [0, 1]. A seeded,
stratified split holds out ``val_fraction`` of them for validation; with no separate
test split, test reuses validation. Everything lives in memory as two tensors.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from llvq.data.base import ImageDataModule, require_fraction
from llvq.data.images import resize, to_channels

__all__ = ["DigitsDataModule", "load_digit_tensors"]


def load_digit_tensors(channels: int, image_size: int) -> tuple[Tensor, Tensor]:
    """All 1,797 digits as ``x`` float32 ``(N, channels, image_size, image_size)`` in [0, 1] and ``y`` int64.

    Args:
        channels: 1 or 3.
        image_size: square side; 8 is native, other sizes are bilinear resizes.
    """
    bunch = load_digits()
    x = torch.from_numpy(bunch.images).to(torch.float32).div_(16.0).unsqueeze(1)  # (N, 1, 8, 8)
    x = resize(to_channels(x, channels), image_size)  # (N, C, S, S)
    y = torch.from_numpy(bunch.target).to(torch.int64)  # (N,)
    return x.contiguous(), y


class DigitsDataModule(ImageDataModule):
    """scikit-learn's 8x8 handwritten digits with a seeded stratified train/val split.

    Args:
        data_dir: unused (the digits ship with scikit-learn); kept for the common interface.
        batch_size: samples per batch.
        num_workers: dataloader worker processes.
        channels: 1 (native) or 3.
        image_size: 8 (native) or any other side, reached by bilinear resizing.
        seed: seeds the split and the training shuffle.
        val_fraction: share of each class held out for validation (and test).
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 32,
        num_workers: int = 0,
        channels: int = 1,
        image_size: int = 8,
        seed: int = 0,
        val_fraction: float = 0.2,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, channels, image_size, seed)
        self.val_fraction = require_fraction("data.val_fraction", val_fraction)

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        """Load, convert and split the digits."""
        x, y = load_digit_tensors(self.channels, self.image_size)
        train_idx, val_idx = train_test_split(
            torch.arange(len(y)).numpy(),
            test_size=self.val_fraction,
            stratify=y.numpy(),
            random_state=self.seed,
        )
        train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx).sort().values
        val_set = TensorDataset(x[val_idx], y[val_idx])
        return TensorDataset(x[train_idx], y[train_idx]), val_set, val_set

"""The shared base of every llvq image datamodule.

Contract (the autoencoder and the configs rely on it): batches are ``(x, y)`` with ``x``
float32 ``(B, channels, image_size, image_size)`` in ``[0, 1]`` and ``y`` int64 labels, -1
where the data has none. Training shuffles with a generator seeded by ``seed``; validation
and test are fixed and unshuffled. Under DDP Lightning swaps in a ``DistributedSampler``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = ["ImageDataModule", "require_fraction", "require_int", "split_off"]


def require_int(setting: str, value: object, minimum: int) -> int:
    """Check that ``value`` is an integer of at least ``minimum``.

    Args:
        setting: the config key named in the error, e.g. ``"data.batch_size"``.
        value: the value to check.
        minimum: smallest allowed value.

    Returns:
        ``value`` as an int.

    Raises:
        ValueError: naming ``setting`` when the check fails.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{setting} must be an integer >= {minimum}, got {value!r}")
    return value


def require_fraction(setting: str, value: object) -> float:
    """Check that ``value`` is a number strictly between 0 and 1.

    Args:
        setting: the config key named in the error, e.g. ``"data.val_fraction"``.
        value: the value to check.

    Returns:
        ``value`` as a float.

    Raises:
        ValueError: naming ``setting`` when the check fails.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{setting} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def split_off(dataset: Dataset, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """Split ``dataset`` into ``(rest, held_out)`` with a seeded permutation.

    Args:
        dataset: a sized map-style dataset.
        fraction: share held out, rounded to whole samples.
        seed: seeds the permutation; the held-out indices are kept in ascending order.

    Raises:
        ValueError: when the split would leave either side empty.
    """
    n = len(dataset)  # type: ignore[arg-type]
    n_held = round(n * fraction)
    if not 0 < n_held < n:
        raise ValueError(
            f"data.val_fraction={fraction} leaves {n_held} of {n} samples for validation; "
            "choose a fraction that leaves both sides non-empty"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held = order[:n_held].sort().values
    rest = order[n_held:]
    return Subset(dataset, rest.tolist()), Subset(dataset, held.tolist())


class ImageDataModule(L.LightningDataModule, ABC):
    """Base datamodule: argument checks, dataloaders, and the batch contract.

    Subclasses implement :meth:`build_datasets`; everything else is shared.

    Args:
        data_dir: folder holding the dataset files (``data/`` in the repository).
        batch_size: samples per batch (per process under DDP).
        num_workers: dataloader worker processes; 0 loads in the main process.
        channels: 1 (gray) or 3 (RGB); images are converted to exactly this many channels.
        image_size: side of the square images delivered, in pixels.
        seed: seeds the train shuffle, the train/val split and any random crops.
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 32,
        num_workers: int = 0,
        channels: int = 3,
        image_size: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ValueError(f"data.channels must be 1 or 3, got {channels!r}")
        self.data_dir = Path(data_dir)
        self.batch_size = require_int("data.batch_size", batch_size, 1)
        self.num_workers = require_int("data.num_workers", num_workers, 0)
        self.channels = channels
        self.image_size = require_int("data.image_size", image_size, 1)
        self.seed = require_int("data.seed", seed, 0)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @abstractmethod
    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        """Return the ``(train, val, test)`` datasets, each yielding ``(x, y)`` samples."""

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets once per process (Lightning calls this on every rank)."""
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = self.build_datasets()

    @property
    def global_rank(self) -> int:
        """Rank of this process under DDP (0 without a trainer)."""
        return self.trainer.global_rank if self.trainer is not None else 0

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(
                f"{type(self).__name__}.setup() must run before asking for a dataloader"
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (seeded by ``seed``)."""
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        """Fixed, unshuffled validation batches."""
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        """Fixed, unshuffled test batches."""
        return self._loader(self.test_set, train=False)

"""The shared base of every llvq image datamodule.

Contract (the autoencoder and the configs rely on it): batches are ``(x, y)`` with ``x``
float32 ``(B, channels, image_size, image_size)`` in ``[0, 1]`` and ``y`` int64 labels, -1
where the data has none. Training shuffles with a generator seeded by ``seed``; validation
and test are fixed and unshuffled. Under DDP Lightning swaps in a ``DistributedSampler``.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

__all__ = [
    "ImageDataModule",
    "ResumableLoader",
    "ResumableSampler",
    "require_fraction",
    "require_int",
    "resumable_loader",
    "split_off",
    "train_position",
]


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


def train_position(trainer: Any) -> tuple[int, int]:
    """``(epoch, batches already trained in it)`` of a trainer, read when an epoch's data starts.

    In a fresh epoch this is ``(current_epoch, 0)``. Right after a resume Lightning has restored
    its loop counters but not yet reset them, so they say where the checkpoint was taken:
    ``batch_progress.current.processed`` batches of ``current_epoch`` were trained (a checkpoint
    saved in ``on_train_batch_end`` or at the epoch's end); when that batch was the epoch's last,
    the next batch is the first of the following epoch.
    """
    epoch = int(trainer.current_epoch)
    progress = trainer.fit_loop.epoch_loop.batch_progress
    done = int(progress.current.processed)
    if done and progress.is_last_batch:
        return epoch + 1, 0
    return epoch, done


class ResumableSampler(DistributedSampler):
    """A seeded order that is a pure function of ``(seed, epoch)`` and resumes mid-epoch.

    Every epoch's order is drawn from ``seed + epoch`` (as :class:`DistributedSampler` does) and
    the epoch and its start are read from the trainer when the epoch's data starts
    (:func:`train_position`), so a run resumed from any checkpoint sees exactly the batches the
    uninterrupted run saw next. Lightning leaves a ``DistributedSampler`` in place under DDP, so
    ranks split each epoch's order as usual.

    Args:
        dataset: the sized dataset.
        batch_size: samples per batch (a resume skips whole batches).
        seed: seeds the order.
        shuffle: shuffle each epoch (``False``: index order).
        trainer: a callable returning the trainer (or ``None`` outside a fit).
        num_replicas: DDP world size.
        rank: DDP rank.
        epoch_keys: yield ``epoch · len(dataset) + index`` instead of ``index``, for datasets
            whose samples depend on the epoch (:class:`~llvq.data.photos.RandomCrops`).
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True,
                 trainer: Any = None, num_replicas: int = 1, rank: int = 0,
                 epoch_keys: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed)
        self.batch_size = batch_size
        self.trainer = trainer or (lambda: None)
        self.epoch_keys = epoch_keys
        self._passes = 0  # outside a trainer every pass over the loader is the next epoch

    def __iter__(self) -> Iterator[int]:
        # lazy: runs at the first batch, after Lightning has restored a checkpoint's counters
        trainer = self.trainer()
        if trainer is None:
            self.epoch, done = self._passes, 0
            self._passes += 1
        else:
            self.epoch, done = train_position(trainer)
        order = super().__iter__()
        length = len(self.dataset)  # type: ignore[arg-type]
        for index in itertools.islice(order, done * self.batch_size, None):
            yield self.epoch * length + index if self.epoch_keys else index


class ResumableLoader(DataLoader):
    """A :class:`DataLoader` over a :class:`ResumableSampler`, stateful in Lightning's sense.

    Its position needs no state of its own: the sampler reads the epoch and the batches done
    from the restored trainer. ``state_dict`` / ``load_state_dict`` exist so that Lightning
    knows the loader resumes mid-epoch (and does not warn that it cannot).
    """

    def state_dict(self) -> dict[str, Any]:
        return {"position": "read from the trainer by ResumableSampler"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore: the sampler reads the position from the trainer."""


def resumable_loader(dataset: Dataset, batch_size: int, seed: int, trainer: Any,
                     num_workers: int = 0, epoch_keys: bool = False, **kwargs: Any) -> DataLoader:
    """A training :class:`DataLoader` over a :class:`ResumableSampler` (exact resume).

    Args:
        dataset: the training set.
        batch_size: samples per batch (per process under DDP).
        seed: seeds the order and the workers' seeds.
        trainer: a callable returning the attached trainer (or ``None``).
        num_workers: dataloader worker processes.
        epoch_keys: see :class:`ResumableSampler`.
        **kwargs: passed to :class:`DataLoader` (``pin_memory``, ...).
    """
    t = trainer()
    replicas, rank = (t.world_size, t.global_rank) if t is not None else (1, 0)
    sampler = ResumableSampler(dataset, batch_size, seed, True, trainer, replicas, rank,
                               epoch_keys)
    return ResumableLoader(dataset, batch_size=batch_size, sampler=sampler,
                           generator=torch.Generator().manual_seed(seed), num_workers=num_workers,
                           persistent_workers=num_workers > 0, **kwargs)


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
        if train:
            return resumable_loader(dataset, self.batch_size, self.seed, lambda: self.trainer,
                                    self.num_workers, getattr(dataset, "epoch_keys", False),
                                    pin_memory=torch.cuda.is_available())
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches: the order is a function of ``(seed, epoch)`` and a
        resumed run continues it from the checkpoint's batch (:class:`ResumableSampler`)."""
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        """Fixed, unshuffled validation batches."""
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        """Fixed, unshuffled test batches."""
        return self._loader(self.test_set, train=False)

"""MNIST, Fashion-MNIST, CIFAR-10 and CelebA, read by torchvision from ``data_dir``.

``prepare_data`` (run once per node by Lightning) downloads what is missing when
``download`` is true; ``setup`` then reads the files without touching the network. When
the files are absent and cannot be fetched, one ``FileNotFoundError`` says where to put
which files and which setting to change. Downloads run under a socket timeout so a
network that drops packets fails in seconds instead of hanging.

MNIST, Fashion-MNIST and CIFAR-10 hold out a seeded ``val_fraction`` of the official
training split for validation and test on the official test split. CelebA uses its
official train / valid / test partition and its identities (0-based) as labels.
"""

from __future__ import annotations

import socket
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from torch import Tensor
from torch.utils.data import Dataset
from torchvision import datasets

from llvq.data.base import ImageDataModule, require_fraction, split_off
from llvq.data.images import PILToSquareTensor

__all__ = [
    "CIFAR10DataModule",
    "CelebADataModule",
    "FashionMNISTDataModule",
    "MNISTDataModule",
    "TorchvisionDataModule",
]

DOWNLOAD_SOCKET_TIMEOUT_S = 30.0


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Bound every blocking socket call (torchvision's urlopen sets no timeout of its own)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds if previous is None else previous)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


class TorchvisionDataModule(ImageDataModule):
    """Shared download / missing-files handling for torchvision datasets.

    Subclasses name the torchvision class, its on-disk layout, and how to open a split.

    Args:
        data_dir: folder holding the dataset (see ``data/README.md`` for the layout).
        batch_size: samples per batch.
        num_workers: dataloader worker processes.
        channels: 1 or 3.
        image_size: side of the delivered square images.
        seed: seeds the training shuffle and any held-out split.
        download: fetch missing files in ``prepare_data`` (needs internet access).
    """

    dataset_cls: ClassVar[type[datasets.VisionDataset]]
    source: ClassVar[str]  # where the files come from, for the error message

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 32,
        num_workers: int = 0,
        channels: int = 3,
        image_size: int = 32,
        seed: int = 0,
        download: bool = True,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, channels, image_size, seed)
        self.download = bool(download)
        self.transform = PILToSquareTensor(channels, image_size)

    @property
    def name(self) -> str:
        """The dataset's name in messages."""
        return self.dataset_cls.__name__

    @abstractmethod
    def expected_files(self) -> tuple[Path, list[str]]:
        """The folder the files must be in and their names (a trailing ``/`` marks a folder)."""

    @abstractmethod
    def _open(self, split: str, download: bool) -> Dataset:
        """Construct the torchvision dataset for ``split``."""

    def files_present(self) -> bool:
        """Whether every expected file or folder exists."""
        folder, names = self.expected_files()
        return all((folder / n).exists() for n in names)

    def read(self, split: str, download: bool = False) -> Dataset:
        """Open ``split``, turning torchvision's not-found errors into one clear message.

        Raises:
            FileNotFoundError: the files are missing (or corrupt) and could not be downloaded.
        """
        try:
            if not download:
                return self._open(split, download=False)
            with _socket_timeout(DOWNLOAD_SOCKET_TIMEOUT_S):
                return self._open(split, download=True)
        except (RuntimeError, OSError) as err:
            if download:
                reason = "downloading it failed: " + " ".join(str(err).split())[:300]
            else:
                reason = "data.download is false"
            raise FileNotFoundError(self._missing_message(reason)) from None

    def _missing_message(self, reason: str) -> str:
        folder, names = self.expected_files()
        return (
            f"{self.name} is missing or incomplete in {folder} and {reason}. "
            f"Put these files there: {', '.join(names)} (from {self.source}); "
            "or set data.data_dir to the folder that already holds them; "
            "or run once with data.download=true on a machine with internet access."
        )

    def prepare_data(self) -> None:
        """Download missing files (Lightning runs this once per node, before ``setup``).

        Opening the training split with ``download=True`` fetches the files of every split.
        """
        if self.download and not self.files_present():
            self.read("train", download=True)


class _HeldOutValidation(TorchvisionDataModule):
    """Datasets with an official train/test split: validation is a seeded share of train.

    Args:
        val_fraction: share of the official training split held out for validation.
        other arguments: see :class:`TorchvisionDataModule`; ``channels`` defaults to the
            dataset's native count (``default_channels``).
    """

    #: channel count used when ``channels`` is not given (the dataset's native one)
    default_channels: ClassVar[int] = 3

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 32,
        num_workers: int = 0,
        channels: int | None = None,
        image_size: int = 32,
        seed: int = 0,
        download: bool = True,
        val_fraction: float = 0.1,
    ) -> None:
        channels = self.default_channels if channels is None else channels
        super().__init__(data_dir, batch_size, num_workers, channels, image_size, seed, download)
        self.val_fraction = require_fraction("data.val_fraction", val_fraction)

    def _open(self, split: str, download: bool) -> Dataset:
        return self.dataset_cls(
            str(self.data_dir), train=split == "train", transform=self.transform, download=download
        )

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        """Official train minus a held-out validation share; official test."""
        train, val = split_off(self.read("train"), self.val_fraction, self.seed)
        return train, val, self.read("test")


class MNISTDataModule(_HeldOutValidation):
    """MNIST handwritten digits (60k train / 10k test, 28x28 gray), 10 labels.

    Args:
        data_dir: holds ``MNIST/raw/`` with the four idx files.
        batch_size: samples per batch.
        num_workers: dataloader worker processes.
        channels: 1 (native) or 3.
        image_size: 28 is native; the default 32 resizes bilinearly so 2x/4x/8x downsampling divides it.
        seed: seeds the shuffle and the validation split.
        download: fetch missing files in ``prepare_data``.
        val_fraction: share of the training split held out for validation.
    """

    dataset_cls = datasets.MNIST
    source = datasets.MNIST.mirrors[0]

    default_channels = 1

    def expected_files(self) -> tuple[Path, list[str]]:
        """``<data_dir>/<Name>/raw/`` and the decompressed idx file names."""
        folder = self.data_dir / self.dataset_cls.__name__ / "raw"
        return folder, [Path(url).stem for url, _ in self.dataset_cls.resources]

    def _missing_message(self, reason: str) -> str:
        return super()._missing_message(reason) + (
            " The .gz archives may be put there instead; data.download=true extracts them offline."
        )


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST clothing images (60k train / 10k test, 28x28 gray), 10 labels.

    Same arguments as :class:`MNISTDataModule`; files under ``FashionMNIST/raw/``.
    """

    dataset_cls = datasets.FashionMNIST
    source = datasets.FashionMNIST.mirrors[0]


class CIFAR10DataModule(_HeldOutValidation):
    """CIFAR-10 (50k train / 10k test, 32x32 RGB), 10 labels.

    Args:
        data_dir: holds ``cifar-10-batches-py/`` (the extracted python version).
        batch_size: samples per batch.
        num_workers: dataloader worker processes.
        channels: 3 (native) or 1.
        image_size: 32 is native.
        seed: seeds the shuffle and the validation split.
        download: fetch missing files in ``prepare_data``.
        val_fraction: share of the training split held out for validation.
    """

    dataset_cls = datasets.CIFAR10
    source = datasets.CIFAR10.url

    def expected_files(self) -> tuple[Path, list[str]]:
        """``<data_dir>/cifar-10-batches-py/`` with the six batches and ``batches.meta``."""
        cls = self.dataset_cls
        names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return self.data_dir / cls.base_folder, names


def _identity_label(target: Tensor) -> int:
    """CelebA identities are numbered from 1; labels start at 0."""
    return int(target) - 1


class CelebADataModule(TorchvisionDataModule):
    """CelebA aligned faces (178x218 RGB; 162,770 / 19,867 / 19,962 official splits).

    Images are center-cropped to a square and resized to ``image_size``; ``y`` is the
    0-based celebrity identity. torchvision downloads CelebA from Google Drive, which
    needs ``pip install gdown`` and often hits the Drive quota: placing the files by
    hand is the dependable way.

    Args:
        data_dir: holds ``celeba/`` with ``img_align_celeba/`` and the five list files.
        batch_size: samples per batch.
        num_workers: dataloader worker processes.
        channels: 3 (native) or 1.
        image_size: side of the delivered square images.
        seed: seeds the training shuffle.
        download: fetch missing files in ``prepare_data``.
    """

    dataset_cls = datasets.CelebA
    source = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, 'Align&Cropped Images'"

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 32,
        num_workers: int = 0,
        channels: int = 3,
        image_size: int = 64,
        seed: int = 0,
        download: bool = True,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, channels, image_size, seed, download)

    def expected_files(self) -> tuple[Path, list[str]]:
        """``<data_dir>/celeba/`` with ``img_align_celeba/`` and the list files."""
        cls = self.dataset_cls
        names = [name for _, _, name in cls.file_list if not name.endswith(".zip")]
        return self.data_dir / cls.base_folder, ["img_align_celeba/", *names]

    def _open(self, split: str, download: bool) -> Dataset:
        return self.dataset_cls(
            str(self.data_dir),
            split=split,
            target_type="identity",
            transform=self.transform,
            target_transform=_identity_label,
            download=download,
        )

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        """The official train / valid / test partition."""
        return self.read("train"), self.read("valid"), self.read("test")

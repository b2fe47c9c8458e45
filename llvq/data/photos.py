"""Random crops of the photographs that ship inside the scikit-image wheel.

The embedded default dataset: no download, no files under ``data/``. Each photograph is
decoded once, resized so its shorter side is ``short_side`` pixels (so a 32-pixel crop
holds visible structure) and kept in memory as a uint8 tensor; crops are cut on the fly.

Training draws ``train_samples`` fresh random crops every epoch from ``train_images``.
Validation is ``val_samples`` fixed crops (drawn once from ``seed``) of *different*
photographs, ``val_images``; test reuses them. The photographs carry no labels: ``y = -1``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data as skdata
from torch import Tensor
from torch.utils.data import Dataset

from llvq.data.base import ImageDataModule, require_int
from llvq.data.images import pil_to_square_uint8, resize

__all__ = ["PHOTOGRAPHS", "PhotosDataModule", "load_photograph"]

# Photographs bundled in the scikit-image wheel (all load offline, without pooch).
PHOTOGRAPHS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": skdata.astronaut,  # 512x512 RGB, portrait
    "brick": skdata.brick,  # 512x512 gray, texture
    "camera": skdata.camera,  # 512x512 gray, cameraman
    "chelsea": skdata.chelsea,  # 300x451 RGB, cat
    "clock": skdata.clock,  # 300x400 gray, motion-blurred clock
    "coffee": skdata.coffee,  # 400x600 RGB, cup of coffee
    "coins": skdata.coins,  # 303x384 gray, coins
    "grass": skdata.grass,  # 512x512 gray, texture
    "gravel": skdata.gravel,  # 512x512 gray, texture
    "hubble_deep_field": skdata.hubble_deep_field,  # 872x1000 RGB, galaxies
    "immunohistochemistry": skdata.immunohistochemistry,  # 512x512 RGB, stained tissue
    "moon": skdata.moon,  # 512x512 gray, lunar surface
    "motorcycle": lambda: skdata.stereo_motorcycle()[0],  # 500x741 RGB, left stereo view
    "rocket": skdata.rocket,  # 427x640 RGB, launch pad
}

DEFAULT_TRAIN_IMAGES = (
    "astronaut",
    "brick",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "motorcycle",
    "rocket",
)
DEFAULT_VAL_IMAGES = ("chelsea", "camera", "clock")


def load_photograph(name: str, channels: int, short_side: int) -> Tensor:
    """Decode one bundled photograph as a uint8 ``(channels, H, W)`` tensor, min(H, W) = short_side.

    Args:
        name: a key of :data:`PHOTOGRAPHS`.
        channels: 1 or 3 (gray photographs are repeated to RGB, colour ones reduced to luma).
        short_side: the shorter side after an antialiased bilinear resize.

    Raises:
        ValueError: the photograph's file in scikit-image's data folder does not decode
            (truncated or damaged), naming the photograph and the folder.
    """
    try:
        array = PHOTOGRAPHS[name]()
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # PIL's damaged-file errors
        folder = Path(skdata.__file__).parent
        raise ValueError(f"photograph {name!r} (data.train_images / data.val_images) could not be "
                         f"decoded: {type(err).__name__}: {err}; its file under {folder} is "
                         f"truncated or damaged -- reinstall scikit-image "
                         f"(pip install --force-reinstall scikit-image) or leave {name!r} out"
                         ) from None
    image = Image.fromarray(array)
    width, height = image.size
    factor = short_side / min(width, height)
    size = (max(short_side, round(width * factor)), max(short_side, round(height * factor)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    return pil_to_square_uint8(image, channels, size=None)


def _crop(photo: Tensor, top: int, left: int, crop_size: int, image_size: int) -> Tensor:
    x = photo[:, top : top + crop_size, left : left + crop_size].to(torch.float32).div_(255.0)
    return resize(x, image_size)  # (C, image_size, image_size)


class RandomCrops(Dataset):
    """``length`` random crops per epoch, fresh each epoch, reproducible from ``seed``.

    Each crop is a pure function of ``(seed, key)``: the training sampler
    (:class:`~llvq.data.base.ResumableSampler` with ``epoch_keys``) hands out the key
    ``epoch · length + index``, so every epoch draws new crops, workers and DDP ranks (which
    get disjoint keys) never repeat each other, and a run resumed mid-epoch cuts exactly the
    crops the uninterrupted run cut. An index below ``length`` is the key of epoch 0.
    """

    epoch_keys = True  # read by ImageDataModule: its sampler yields epoch-dependent keys

    def __init__(
        self,
        photos: Sequence[Tensor],
        length: int,
        crop_size: int,
        image_size: int,
        seed: int,
    ) -> None:
        self.photos = list(photos)
        self.length = length
        self.crop_size = crop_size
        self.image_size = image_size
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        rng = random.Random(f"{self.seed}/crop/{int(index)}")
        photo = self.photos[rng.randrange(len(self.photos))]
        top = rng.randrange(photo.shape[1] - self.crop_size + 1)
        left = rng.randrange(photo.shape[2] - self.crop_size + 1)
        return _crop(photo, top, left, self.crop_size, self.image_size), -1


class FixedCrops(Dataset):
    """``length`` crops drawn once from ``seed``: the same crops in the same order every time."""

    def __init__(
        self, photos: Sequence[Tensor], length: int, crop_size: int, image_size: int, seed: int
    ) -> None:
        self.photos = list(photos)
        self.crop_size = crop_size
        self.image_size = image_size
        rng = random.Random(f"{seed}/val")
        self.boxes = []  # (photo index, top, left), photographs in turn
        for i in range(length):
            p = i % len(self.photos)
            h, w = self.photos[p].shape[1:]
            self.boxes.append(
                (p, rng.randrange(h - crop_size + 1), rng.randrange(w - crop_size + 1))
            )

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        p, top, left = self.boxes[index]
        return _crop(self.photos[p], top, left, self.crop_size, self.image_size), -1


def _check_names(setting: str, names: Sequence[str] | str) -> list[str]:
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in PHOTOGRAPHS]
    if not names or unknown:
        raise ValueError(
            f"{setting} must be a non-empty list of bundled photographs from "
            f"{sorted(PHOTOGRAPHS)}; unknown: {unknown}"
        )
    return names


class PhotosDataModule(ImageDataModule):
    """Crops of scikit-image's bundled photographs; trains in seconds on a CPU.

    Args:
        data_dir: unused (the photographs ship with scikit-image); kept for the common interface.
        batch_size: samples per batch.
        num_workers: dataloader worker processes.
        channels: 1 or 3.
        image_size: side of the delivered square images.
        seed: seeds the validation crops, the training crops and the shuffle.
        train_samples: random crops per training epoch (re-drawn each epoch).
        val_samples: fixed validation crops (also the test set).
        crop_size: side of the crop cut from the resized photograph; ``None`` means
            ``image_size``. A different value resizes each crop to ``image_size``.
        short_side: each photograph is first resized so its shorter side has this many pixels.
        train_images: names from :data:`PHOTOGRAPHS` to train on.
        val_images: names from :data:`PHOTOGRAPHS` to validate on; disjoint from ``train_images``.
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 32,
        num_workers: int = 0,
        channels: int = 3,
        image_size: int = 32,
        seed: int = 0,
        train_samples: int = 4096,
        val_samples: int = 512,
        crop_size: int | None = None,
        short_side: int = 256,
        train_images: Sequence[str] = DEFAULT_TRAIN_IMAGES,
        val_images: Sequence[str] = DEFAULT_VAL_IMAGES,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, channels, image_size, seed)
        self.train_samples = require_int("data.train_samples", train_samples, 1)
        self.val_samples = require_int("data.val_samples", val_samples, 1)
        self.crop_size = (
            image_size if crop_size is None else require_int("data.crop_size", crop_size, 1)
        )
        self.short_side = require_int("data.short_side", short_side, 1)
        if self.short_side < self.crop_size:
            raise ValueError(
                f"data.short_side ({short_side}) must be at least data.crop_size "
                f"({self.crop_size}; it defaults to data.image_size)"
            )
        self.train_images = _check_names("data.train_images", train_images)
        self.val_images = _check_names("data.val_images", val_images)
        shared = sorted(set(self.train_images) & set(self.val_images))
        if shared:
            raise ValueError(
                f"data.val_images must not repeat data.train_images; both hold {shared}"
            )

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        """Decode the photographs once and wrap them in crop datasets."""
        train = [load_photograph(n, self.channels, self.short_side) for n in self.train_images]
        val = [load_photograph(n, self.channels, self.short_side) for n in self.val_images]
        train_set = RandomCrops(train, self.train_samples, self.crop_size, self.image_size, self.seed)
        val_set = FixedCrops(val, self.val_samples, self.crop_size, self.image_size, self.seed)
        return train_set, val_set, val_set

"""LightningDataModules for llvq: embedded offline datasets and torchvision-backed ones.

Every image module yields ``(x, y)`` batches: ``x`` float32 ``(B, channels, image_size,
image_size)`` in [0, 1], ``y`` int64 labels (-1 where the data has none). ``TextDataModule``
serves calibration/evaluation text for LLM quantization (``transformers`` not needed to import).
"""

from llvq.data.base import ImageDataModule
from llvq.data.codes import CodesDataModule
from llvq.data.digits import DigitsDataModule
from llvq.data.image_folder import ImageFolderDataModule
from llvq.data.photos import PHOTOGRAPHS, PhotosDataModule
from llvq.data.text import TextDataModule
from llvq.data.torchvision_data import (
    CelebADataModule,
    CIFAR10DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
)

__all__ = [
    "PHOTOGRAPHS",
    "CIFAR10DataModule",
    "CelebADataModule",
    "CodesDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "PhotosDataModule",
    "TextDataModule",
]

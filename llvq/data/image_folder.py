"""A folder of images (FFHQ and the like), optionally sorted into class sub-folders.

Images are found recursively under ``train_dir`` (any extension torchvision reads), in
sorted path order. With ``class_folders`` each first-level sub-folder is a class and
``y`` its index in sorted order (torchvision's ``ImageFolder`` convention); otherwise
``y = -1`` (FFHQ's numbered sub-folders are shards, not classes). Validation is either a
seeded ``val_fraction`` of ``train_dir`` or, when ``val_dir`` is set, that folder; test
reuses validation. Every image is center-cropped to a square and resized to ``image_size``.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from llvq.data.base import ImageDataModule, require_fraction, split_off
from llvq.data.images import PILToSquareTensor

__all__ = ["ImageFiles", "ImageFolderDataModule", "list_images"]


class ImageFiles(Dataset):
    """Image files decoded on access; a file that does not decode is a ``ValueError`` naming it.

    Args:
        paths: image files.
        labels: one int per path (-1 for unlabelled).
        transform: PIL image -> float tensor.
    """

    def __init__(self, paths: list[Path], labels: list[int], transform: PILToSquareTensor) -> None:
        self.paths = paths
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                return self.transform(image), self.labels[index]
        except (OSError, SyntaxError, ValueError, EOFError) as err:  # PIL's damaged-file errors
            raise ValueError(f"image file {path} is truncated or damaged ({type(err).__name__}: "
                             f"{err}); replace or remove it from the data folder") from None


def _images_under(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()
    )


def list_images(
    folder: Path, setting: str, class_folders: bool, classes: list[str] | None = None
) -> tuple[list[Path], list[int], list[str]]:
    """Find the images under ``folder`` and their labels.

    Args:
        folder: the folder to search recursively.
        setting: the config key named in errors (``"data.train_dir"`` or ``"data.val_dir"``).
        class_folders: label by first-level sub-folder; otherwise every label is -1.
        classes: the class names to index by (taken from the training folder); ``None`` reads
            them from ``folder``.

    Returns:
        ``(paths, labels, classes)``; ``classes`` is empty without ``class_folders``.

    Raises:
        FileNotFoundError: ``folder`` is missing or holds no images.
        ValueError: ``folder`` has a class sub-folder that ``classes`` lacks.
    """
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Image folder {folder} does not exist. Put the images there (sub-folders are "
            f"searched; extensions {', '.join(IMG_EXTENSIONS)}), or change {setting} "
            "(relative to data.data_dir, or absolute) or data.data_dir."
        )
    if not class_folders:
        paths = _images_under(folder)
        labels = [-1] * len(paths)
        found: list[str] = []
    else:
        found = sorted(d.name for d in folder.iterdir() if d.is_dir())
        index = {name: i for i, name in enumerate(found if classes is None else classes)}
        unknown = sorted(set(found) - set(index))
        if unknown:
            raise ValueError(
                f"{setting}={folder} has class folders {unknown} that data.train_dir lacks; "
                "validation classes must be training classes"
            )
        paths, labels = [], []
        for name in found:
            files = _images_under(folder / name)
            paths += files
            labels += [index[name]] * len(files)
    if not paths:
        where = "in its class sub-folders" if class_folders else "in it or its sub-folders"
        raise FileNotFoundError(
            f"No images found {where}: {folder}. Add images there or change {setting} "
            "(data.class_folders=true expects one sub-folder per class)."
        )
    return paths, labels, found if classes is None else classes


class ImageFolderDataModule(ImageDataModule):
    """Images from a folder under ``data_dir``, e.g. FFHQ at ``data/ffhq``.

    Args:
        data_dir: the folder that ``train_dir`` and ``val_dir`` are relative to.
        batch_size: samples per batch.
        num_workers: dataloader worker processes (decoding large images wants several).
        channels: 1 or 3.
        image_size: side of the delivered square images.
        seed: seeds the train/val split and the training shuffle.
        train_dir: folder of training images, relative to ``data_dir`` unless absolute.
        val_dir: folder of validation images; ``None`` holds out ``val_fraction`` of ``train_dir``.
        val_fraction: share of ``train_dir`` held out when ``val_dir`` is unset.
        class_folders: label images by their first-level sub-folder; otherwise ``y = -1``.
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 32,
        num_workers: int = 0,
        channels: int = 3,
        image_size: int = 64,
        seed: int = 0,
        train_dir: str = "images",
        val_dir: str | None = None,
        val_fraction: float = 0.05,
        class_folders: bool = False,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, channels, image_size, seed)
        self.train_dir = self.data_dir / train_dir
        self.val_dir = None if val_dir is None else self.data_dir / val_dir
        self.val_fraction = require_fraction("data.val_fraction", val_fraction)
        self.class_folders = bool(class_folders)
        self.classes: list[str] = []

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        """List the files and split them (or read ``val_dir``)."""
        transform = PILToSquareTensor(self.channels, self.image_size)
        paths, labels, self.classes = list_images(
            self.train_dir, "data.train_dir", self.class_folders
        )
        train: Dataset = ImageFiles(paths, labels, transform)
        if self.val_dir is None:
            train, val = split_off(train, self.val_fraction, self.seed)
        else:
            val_paths, val_labels, _ = list_images(
                self.val_dir, "data.val_dir", self.class_folders, self.classes
            )
            val = ImageFiles(val_paths, val_labels, transform)
        return train, val, val

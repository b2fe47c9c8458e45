"""ImageFolderDataModule: flat and class folders, seeded split or explicit val_dir, clear errors."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from llvq.data import ImageFolderDataModule


def write_images(folder: Path, count: int, start: int = 0) -> None:
    """PNGs and JPEGs of mixed sizes and modes (gray, RGB, RGBA, non-square)."""
    folder.mkdir(parents=True, exist_ok=True)
    modes = [
        ("RGB", (40, 30), "png"),
        ("L", (20, 20), "png"),
        ("RGBA", (16, 24), "png"),
        ("RGB", (33, 33), "jpg"),
    ]
    for i in range(start, start + count):
        mode, size, ext = modes[i % len(modes)]
        Image.new(mode, size, color=(i * 10) % 256 if mode == "L" else None).save(
            folder / f"{i:03d}.{ext}"
        )


@pytest.mark.parametrize(("channels", "image_size"), [(3, 16), (1, 8)])
def test_flat_folder_with_seeded_split(tmp_path, channels, image_size):
    write_images(tmp_path / "ffhq" / "00000", 12)
    write_images(tmp_path / "ffhq" / "01000", 8, start=12)
    (tmp_path / "ffhq" / "LICENSE.txt").write_text("not an image")
    dm = ImageFolderDataModule(
        data_dir=str(tmp_path),
        train_dir="ffhq",
        channels=channels,
        image_size=image_size,
        val_fraction=0.25,
        batch_size=5,
    )
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (15, 5)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (5, channels, image_size, image_size) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and (y == -1).all()
        assert 0.0 <= x.min() and x.max() <= 1.0
    again = ImageFolderDataModule(data_dir=str(tmp_path), train_dir="ffhq", val_fraction=0.25)
    again.setup()
    assert again.val_set.indices == dm.val_set.indices


def test_class_folders_and_explicit_val_dir(tmp_path):
    for name in ("cats", "dogs"):
        write_images(tmp_path / "train" / name, 3)
    write_images(tmp_path / "val" / "dogs", 2)
    dm = ImageFolderDataModule(
        data_dir=str(tmp_path), train_dir="train", val_dir="val", class_folders=True, batch_size=8
    )
    dm.setup()
    assert dm.classes == ["cats", "dogs"]
    assert next(iter(dm.val_dataloader()))[1].tolist() == [1, 1]
    assert sorted(next(iter(dm.train_dataloader()))[1].tolist()) == [0, 0, 0, 1, 1, 1]


def test_missing_empty_and_unknown_folders_name_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.train_dir") as info:
        ImageFolderDataModule(data_dir=str(tmp_path), train_dir="ffhq").setup()
    assert str(tmp_path / "ffhq") in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No images found"):
        ImageFolderDataModule(data_dir=str(tmp_path), train_dir="empty").setup()
    write_images(tmp_path / "train" / "cats", 2)
    write_images(tmp_path / "val" / "owls", 2)
    dm = ImageFolderDataModule(
        data_dir=str(tmp_path), train_dir="train", val_dir="val", class_folders=True
    )
    with pytest.raises(ValueError, match="owls"):
        dm.setup()
    with pytest.raises(ValueError, match="data.val_fraction"):
        ImageFolderDataModule(val_fraction=0)

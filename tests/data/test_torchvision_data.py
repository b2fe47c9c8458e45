"""MNIST, Fashion-MNIST, CIFAR-10 and CelebA through torchvision's readers, on tiny fake files.

The files are written in each dataset's real on-disk format; where torchvision checks MD5
sums, the test points its table at the sums of the fake files so the real check still runs.
Nothing here touches the network: download attempts go to a closed local port.
"""

import hashlib
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets

from llvq.data import CelebADataModule, CIFAR10DataModule, FashionMNISTDataModule, MNISTDataModule

CLOSED_PORT = "http://127.0.0.1:9/"  # the discard port: connection refused at once


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_mnist(root: Path, name: str, n_train: int = 20, n_test: int = 6) -> None:
    raw = root / name / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + labels.tobytes()
        )


def write_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch, per_batch: int = 4) -> None:
    folder = root / datasets.CIFAR10.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name: str, entry: dict) -> list[str]:
        path = folder / name
        path.write_bytes(pickle.dumps(entry))
        return [name, md5(path)]

    def batch(name: str) -> list[str]:
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        return dump(name, {"data": data, "labels": [i % 10 for i in range(per_batch)]})

    train_list = [batch(f"data_batch_{i}") for i in range(1, 6)]
    test_list = [batch("test_batch")]
    _, meta_md5 = dump("batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    monkeypatch.setattr(datasets.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(datasets.CIFAR10, "test_list", test_list)
    monkeypatch.setattr(datasets.CIFAR10, "meta", {**datasets.CIFAR10.meta, "md5": meta_md5})


def write_celeba(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, 10)]  # three per official split
    for i, name in enumerate(names):
        Image.new("RGB", (22, 27), (20 * i, 100, 200)).save(folder / "img_align_celeba" / name)
    rows = {
        "list_eval_partition.txt": ["", [str(i // 3) for i in range(9)]],
        "identity_CelebA.txt": ["", [str(i + 1) for i in range(9)]],
        "list_bbox_celeba.txt": ["image_id x_1 y_1 width height", ["1 2 3 4"] * 9],
        "list_landmarks_align_celeba.txt": ["lefteye_x lefteye_y", ["1 2"] * 9],
        "list_attr_celeba.txt": ["Smiling Young", ["1 -1"] * 9],
    }
    for file, (header, values) in rows.items():
        lines = [f"{n} {v}" for n, v in zip(names, values, strict=True)]
        if header:
            lines = ["9", header, *lines]
        (folder / file).write_text("\n".join(lines) + "\n")
    file_list = [
        (file_id, md5(folder / name) if not name.endswith(".zip") else sum_, name)
        for file_id, sum_, name in datasets.CelebA.file_list
    ]
    monkeypatch.setattr(datasets.CelebA, "file_list", file_list)


@pytest.mark.parametrize("module", [MNISTDataModule, FashionMNISTDataModule])
@pytest.mark.parametrize(("channels", "image_size"), [(1, 28), (3, 32)])
def test_mnist_like_reads_idx_files(tmp_path, module, channels, image_size):
    write_mnist(tmp_path, module.dataset_cls.__name__)
    dm = module(data_dir=str(tmp_path), channels=channels, image_size=image_size, batch_size=4)
    dm.prepare_data()  # files present: no download attempt
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (18, 2, 6)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (len(y), channels, image_size, image_size) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and 0.0 <= x.min() and x.max() <= 1.0
    if channels == 1 and image_size == 28:  # native: pixels pass through exactly
        raw = datasets.MNIST.__new__(module.dataset_cls)
        raw.root, raw.train = str(tmp_path), False
        data, _ = raw._load_data()
        torch.testing.assert_close(dm.test_set[0][0][0], data[0].float() / 255)


def test_validation_split_is_seeded(tmp_path):
    write_mnist(tmp_path, "MNIST", n_train=50)
    indices = []
    for seed in (0, 0, 1):
        dm = MNISTDataModule(data_dir=str(tmp_path), seed=seed, val_fraction=0.2)
        dm.setup()
        indices.append(dm.val_set.indices)
        assert sorted(dm.val_set.indices + dm.train_set.indices) == list(range(50))
    assert indices[0] == indices[1] != indices[2]


@pytest.mark.parametrize(("channels", "image_size"), [(3, 32), (1, 16)])
def test_cifar10_reads_python_batches(tmp_path, monkeypatch, channels, image_size):
    write_cifar10(tmp_path, monkeypatch)
    dm = CIFAR10DataModule(
        data_dir=str(tmp_path), channels=channels, image_size=image_size, batch_size=3
    )
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (18, 2, 4)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (3, channels, image_size, image_size) and y.dtype == torch.int64


def test_celeba_reads_official_splits(tmp_path, monkeypatch):
    write_celeba(tmp_path, monkeypatch)
    dm = CelebADataModule(data_dir=str(tmp_path), image_size=16, batch_size=3, download=False)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (3, 3, 3)
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (3, 3, 16, 16) and y.tolist() == [3, 4, 5]  # identities 4..6, 0-based


MISSING = [
    (MNISTDataModule, "MNIST/raw", "train-images-idx3-ubyte", ("mirrors", [CLOSED_PORT])),
    (
        FashionMNISTDataModule,
        "FashionMNIST/raw",
        "t10k-labels-idx1-ubyte",
        ("mirrors", [CLOSED_PORT]),
    ),
    (CIFAR10DataModule, "cifar-10-batches-py", "batches.meta", ("url", CLOSED_PORT + "c.tar.gz")),
    (CelebADataModule, "celeba", "list_eval_partition.txt", None),
]


@pytest.mark.parametrize(("module", "folder", "file", "patch"), MISSING)
def test_missing_files_give_one_clear_error(tmp_path, monkeypatch, module, folder, file, patch):
    dm = module(data_dir=str(tmp_path), download=False)
    dm.prepare_data()  # download off: nothing to do
    with pytest.raises(FileNotFoundError) as info:
        dm.setup("fit")
    message = str(info.value)
    for needle in (str(tmp_path / folder), file, "data.data_dir", "data.download"):
        assert needle in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    if patch is not None:  # download on but unreachable: the same clear error, fast
        monkeypatch.setattr(module.dataset_cls, *patch)
        dm = module(data_dir=str(tmp_path), download=True)
        start = time.perf_counter()
        with pytest.raises(FileNotFoundError, match="downloading it failed") as info:
            dm.prepare_data()
        assert time.perf_counter() - start < 10
        assert file in str(info.value) and info.value.__cause__ is None


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [({"val_fraction": 1.0}, "data.val_fraction"), ({"channels": 0}, "data.channels")],
)
def test_bad_arguments_name_the_setting(kwargs, setting):
    with pytest.raises(ValueError, match=setting):
        MNISTDataModule(**kwargs)

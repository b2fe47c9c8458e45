"""PhotosDataModule: contract, deterministic validation, fresh training crops, argument errors."""

import pytest
import torch

from llvq.data import PHOTOGRAPHS, PhotosDataModule
from llvq.data.base import ResumableSampler
from llvq.data.photos import RandomCrops, load_photograph


def batches(loader):
    return [x for x, _ in loader]


@pytest.mark.parametrize("name", sorted(PHOTOGRAPHS))
def test_every_photograph_loads_offline(name):
    photo = load_photograph(name, channels=3, short_side=64)
    assert photo.dtype == torch.uint8 and photo.shape[0] == 3 and min(photo.shape[1:]) == 64


@pytest.mark.parametrize(
    ("channels", "image_size", "crop_size"), [(3, 32, None), (1, 16, None), (3, 16, 48), (1, 8, 4)]
)
def test_batches_follow_the_contract(channels, image_size, crop_size):
    dm = PhotosDataModule(
        channels=channels,
        image_size=image_size,
        crop_size=crop_size,
        batch_size=8,
        train_samples=16,
        val_samples=12,
    )
    dm.setup("fit")
    assert (dm.channels, dm.image_size) == (channels, image_size)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (8, channels, image_size, image_size) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and (y == -1).all()
        assert 0.0 <= x.min() and x.max() <= 1.0
    assert len(dm.train_set) == 16 and len(dm.val_set) == 12


def test_validation_is_fixed_and_reproducible():
    a = PhotosDataModule(train_samples=8, val_samples=40, batch_size=16)
    b = PhotosDataModule(train_samples=8, val_samples=40, batch_size=16)
    a.setup()
    b.setup()
    first, again, other = (
        batches(a.val_dataloader()),
        batches(a.val_dataloader()),
        batches(b.val_dataloader()),
    )
    for x, y, z in zip(first, again, other, strict=True):
        torch.testing.assert_close(x, y)
        torch.testing.assert_close(x, z)
    c = PhotosDataModule(train_samples=8, val_samples=40, batch_size=16, seed=1)
    c.setup()
    assert not torch.equal(next(iter(c.val_dataloader()))[0], first[0])


def test_training_crops_are_fresh_each_epoch_and_reproducible():
    a = PhotosDataModule(train_samples=32, batch_size=32)
    a.setup()
    loader = a.train_dataloader()
    epoch1, epoch2 = next(iter(loader))[0], next(iter(loader))[0]
    assert not torch.equal(epoch1, epoch2)
    b = PhotosDataModule(train_samples=32, batch_size=32)
    b.setup()
    torch.testing.assert_close(next(iter(b.train_dataloader()))[0], epoch1)


def test_training_crops_differ_between_workers_epochs_and_ranks():
    dm = PhotosDataModule(train_samples=32, batch_size=16, num_workers=2)
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    epoch1, epoch2 = torch.cat(batches(loader)), torch.cat(batches(loader))
    assert not torch.equal(epoch1, epoch2)
    assert not torch.equal(epoch1[:16], epoch1[16:])  # the two workers draw different crops
    photos = [load_photograph("astronaut", 3, 64)]
    crops = RandomCrops(photos, 4, 16, 16, seed=0)
    assert not torch.equal(crops[0][0], crops[4][0])  # key 4 = index 0 of epoch 1
    torch.testing.assert_close(crops[5][0], RandomCrops(photos, 4, 16, 16, seed=0)[5][0])
    # DDP ranks get disjoint keys of the same epoch
    keys = [set(ResumableSampler(crops, 2, 0, num_replicas=2, rank=r, epoch_keys=True))
            for r in (0, 1)]
    assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == 4


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"channels": 2}, "data.channels"),
        ({"image_size": 0}, "data.image_size"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"num_workers": -1}, "data.num_workers"),
        ({"train_samples": 0}, "data.train_samples"),
        ({"short_side": 16}, "data.short_side"),
        ({"train_images": ["astronaut", "lena"]}, "data.train_images"),
        ({"val_images": []}, "data.val_images"),
        ({"val_images": ["astronaut"]}, "data.val_images"),
    ],
)
def test_bad_arguments_name_the_setting(kwargs, setting):
    with pytest.raises(ValueError, match=setting):
        PhotosDataModule(**kwargs)

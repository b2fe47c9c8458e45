"""DigitsDataModule: contract, stratified seeded split, resizing and channel conversion."""

import pytest
import torch

from llvq.data import DigitsDataModule


@pytest.mark.parametrize(("channels", "image_size"), [(1, 8), (3, 8), (1, 16), (3, 32)])
def test_batches_follow_the_contract(channels, image_size):
    dm = DigitsDataModule(channels=channels, image_size=image_size, batch_size=10)
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (10, channels, image_size, image_size) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and ((0 <= y) & (y <= 9)).all()
        assert 0.0 <= x.min() and x.max() <= 1.0


def test_native_digits_are_scaled_values():
    dm = DigitsDataModule()
    dm.setup()
    x = dm.val_set.tensors[0]
    assert x.max() == 1.0 and torch.allclose(x * 16, (x * 16).round())


def test_split_is_stratified_disjoint_and_seeded():
    dm = DigitsDataModule(val_fraction=0.2)
    dm.setup()
    (_, y_tr), (x_va, y_va) = dm.train_set.tensors, dm.val_set.tensors
    assert len(y_tr) + len(y_va) == 1797 and len(y_va) == 360
    share = torch.bincount(y_va, minlength=10) / torch.bincount(torch.cat([y_tr, y_va]))
    assert ((share - 0.2).abs() < 0.02).all()
    again = DigitsDataModule(val_fraction=0.2)
    again.setup()
    torch.testing.assert_close(again.val_set.tensors[0], x_va)
    other = DigitsDataModule(val_fraction=0.2, seed=1)
    other.setup()
    assert not torch.equal(other.val_set.tensors[0], x_va)
    val1, val2 = (torch.cat([x for x, _ in dm.val_dataloader()]) for _ in range(2))
    torch.testing.assert_close(val1, val2)


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"val_fraction": 0.0}, "data.val_fraction"),
        ({"val_fraction": 1.5}, "data.val_fraction"),
        ({"channels": 4}, "data.channels"),
        ({"image_size": -8}, "data.image_size"),
        ({"batch_size": 2.5}, "data.batch_size"),
    ],
)
def test_bad_arguments_name_the_setting(kwargs, setting):
    with pytest.raises(ValueError, match=setting):
        DigitsDataModule(**kwargs)

"""Every embedded datamodule feeds a Lightning Trainer: prepare_data, setup, fit, validate, test."""

import lightning as L
import pytest
import torch
from torch import nn

from llvq.data import DigitsDataModule, PhotosDataModule


class TinyAutoencoder(L.LightningModule):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Conv2d(channels, channels, 3, padding=1)

    def step(self, batch):
        x, y = batch
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        return nn.functional.mse_loss(self.net(x), x)

    def training_step(self, batch, batch_idx):
        return self.step(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.step(batch))

    def test_step(self, batch, batch_idx):
        self.log("test/loss", self.step(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    "datamodule",
    [
        lambda: PhotosDataModule(train_samples=64, val_samples=32, batch_size=16),
        lambda: DigitsDataModule(batch_size=64),
    ],
    ids=["photos", "digits"],
)
def test_trainer_runs_fit_and_test(datamodule, tmp_path):
    dm = datamodule()
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        fast_dev_run=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = TinyAutoencoder(dm.channels)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)

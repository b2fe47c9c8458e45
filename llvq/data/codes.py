"""Exported code sets (``llvq-export``) as token sequences for training a prior.

Each sample is the ``h × w`` latent grid of one image in raster order, as vocabulary ids:
``tokens`` int64 ``(h·w,)``, with its label (-1 where the export has none). A seeded split holds
out ``val_fraction`` of the samples; the prior's bits per latent vector are measured on them.
The export's checksums are verified when it is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset, TensorDataset

from llvq.codes_format import load_export
from llvq.data.base import require_fraction, require_int, resumable_loader, split_off

__all__ = ["CodesDataModule"]


class CodesDataModule(L.LightningDataModule):
    """Token sequences ``(B, h·w)`` from an export directory, with a seeded train/val split.

    Args:
        path: the export directory (holding ``manifest.json``) written by ``llvq-export``.
        batch_size: sequences per batch.
        num_workers: dataloader worker processes.
        val_fraction: share of the samples held out for validation (and test).
        seed: seeds the split and the training shuffle.
    """

    def __init__(self, path: str, batch_size: int = 64, num_workers: int = 0,
                 val_fraction: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        if not path or not Path(path).is_dir():
            raise FileNotFoundError(f"data.path={path!r} is not a directory; set data.path to an "
                                    "export directory written by llvq-export")
        self.path = Path(path)
        self.batch_size = require_int("data.batch_size", batch_size, 1)
        self.num_workers = require_int("data.num_workers", num_workers, 0)
        self.val_fraction = require_fraction("data.val_fraction", val_fraction)
        self.seed = require_int("data.seed", seed, 0)
        self.manifest: dict[str, Any] | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Load and verify the export, flatten each grid to a sequence, split."""
        if self.train_set is not None:
            return
        export = load_export(self.path)
        self.manifest = export.manifest
        tokens = export.tokens.flatten(1)  # (N, h*w) raster order
        full = TensorDataset(tokens, export.labels)
        self.train_set, self.val_set = split_off(full, self.val_fraction, self.seed)

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("CodesDataModule.setup() must run before asking for a dataloader")
        if train:  # order = f(seed, epoch); a resumed run continues at the checkpoint's batch
            return resumable_loader(dataset, self.batch_size, self.seed, lambda: self.trainer,
                                    self.num_workers)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

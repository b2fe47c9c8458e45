"""A tiny module with the autoencoder's codes contract, for callback tests.

Its "images" are latents ``(B, D, h, w)`` already: the encoder is the identity, so the codes of
hand-made data are known exactly (``llvq`` with a unit basis rounds each coordinate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from llvq.codes_format import export_codes
from llvq.quantizers import build


class CodesModel(L.LightningModule):
    def __init__(self, quantizer: nn.Module) -> None:
        super().__init__()
        self.quantizer = quantizer
        self.encoder = nn.Identity()
        self.w = nn.Parameter(torch.zeros(()))

    def encode(self, x: Tensor) -> Tensor:
        return self.quantizer.encode(rearrange(self.encoder(x), "b d h w -> b h w d"))

    def decode(self, codes: Tensor) -> Tensor:
        return rearrange(self.quantizer.decode(codes), "b h w d -> b d h w")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return (self.w - 1.0) ** 2

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/loss", (self.w - 1.0) ** 2, sync_dist=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def unit_lattice(dim: int) -> nn.Module:
    """``llvq`` with basis 1: codes are the rounded latents."""
    return build("llvq", dim=dim, init_basis=[1.0] * dim)


def hand_made_latents() -> Tensor:
    """8 samples ``(8, 2, 2, 2)``: even samples all (0, 0); sample i odd all (i, 1).

    Codes: 16 × (0, 0) and 4 × each of (1, 1), (3, 1), (5, 1), (7, 1): 32 vectors, 5 distinct,
    p = (1/2, 1/8, 1/8, 1/8, 1/8), H = 2 bits, perplexity 4.
    """
    x = torch.zeros(8, 2, 2, 2)
    for i in range(1, 8, 2):
        x[i, 0], x[i, 1] = float(i), 1.0
    return x


def loaders(x: Tensor, batch_size: int = 2) -> tuple[DataLoader, DataLoader]:
    ds = TensorDataset(x, torch.full((x.shape[0],), -1))
    return DataLoader(ds, batch_size=batch_size), DataLoader(ds, batch_size=batch_size)


def write_tiny_export(path: Path) -> Path:
    """An ``llvq-export`` directory of 32 hand-made samples (2×2 grid, 5 lattice codes) at ``path``."""
    x = hand_made_latents().repeat(4, 1, 1, 1)  # (32, 2, 2, 2)
    export_codes(CodesModel(unit_lattice(2)).eval(), loaders(x, batch_size=8)[1], path,
                 progress=False)
    return path

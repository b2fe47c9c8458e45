"""ReconstructionGrid and LatticeView write their pictures to TensorBoard."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from llvq.callbacks import CodebookUtilization, LatticeView, ReconstructionGrid, lattice_basis
from llvq.quantizers import build
from tests.callbacks._fake import CodesModel, loaders, unit_lattice


def _events(tmp_path: Path, quantizer: torch.nn.Module) -> EventAccumulator:
    x = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(0))  # (B, D=C, h, w)
    callbacks = [ReconstructionGrid(num_images=4), LatticeView(num_pairs=1), CodebookUtilization()]
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=1,
                        num_sanity_val_steps=0, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        logger=TensorBoardLogger(tmp_path, name="tb", version=""),
                        callbacks=callbacks)
    trainer.fit(CodesModel(quantizer), *loaders(x, batch_size=4))
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    return events


def test_lattice_bottleneck_logs_grid_lattice_and_histogram(tmp_path: Path) -> None:
    events = _events(tmp_path, unit_lattice(3))
    tags = events.Tags()
    assert {"val/reconstructions", "val/lattice"} <= set(tags["images"])
    assert "val/codebook/usage_by_rank" in tags["histograms"]
    grid = events.Images("val/reconstructions")[-1]
    # 4 inputs over 4 reconstructions of 4×4 pixels, 2-pixel padding
    assert (grid.width, grid.height) == (4 * 6 + 2, 2 * 6 + 2)


def test_finite_codebook_has_no_lattice_picture(tmp_path: Path) -> None:
    tags = _events(tmp_path, build("vq", dim=3, codebook_size=4)).Tags()
    assert "val/reconstructions" in tags["images"] and "val/lattice" not in tags["images"]


@pytest.mark.parametrize("name, kwargs", [("llvq", {"init_basis": [0.5, 2.0, 1.0, 3.0]}),
                                          ("zn", {"n": 2, "scale": 0.5})])
def test_lattice_basis_through_the_contract(name: str, kwargs: dict) -> None:
    basis = lattice_basis(build(name, dim=4, **kwargs).eval())
    expected = torch.diag(torch.tensor([0.5, 2.0, 1.0, 3.0])) if name == "llvq" \
        else 0.5 * torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(basis, expected.double(), rtol=1e-6, atol=1e-6)


def test_lattice_on_a_projection_has_a_k_by_d_basis_and_a_picture(tmp_path: Path) -> None:
    """``projected``: codes are 8-vectors, latents 16-wide; the basis is W_out's image of E8's."""
    q = build("projected", dim=16, inner={"name": "zn", "n": 8, "scale": 0.5},
              project_dim=8).eval()
    basis = lattice_basis(q)
    torch.testing.assert_close(basis, 0.5 * q.proj_out.weight.T.double(), rtol=1e-5, atol=1e-6)
    tags = _events(tmp_path, build("projected", dim=3, inner={"name": "zn", "n": 2},
                                   project_dim=2)).Tags()
    assert "val/lattice" in tags["images"]

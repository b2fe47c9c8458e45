"""PriorModule and CodesDataModule on a hand-made export."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from llvq.codes_format import ExportIntegrityError
from llvq.data import CodesDataModule
from llvq.modules import PriorModule
from llvq.modules.prior import load_prior
from llvq.sample import sample_images
from tests.callbacks._fake import CodesModel, unit_lattice, write_tiny_export


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    return write_tiny_export(tmp_path / "export")  # 32 samples, 2×2 grid, 5 distinct codes


def test_codes_datamodule_yields_raster_token_sequences(export_dir: Path) -> None:
    dm = CodesDataModule(str(export_dir), batch_size=4, val_fraction=0.25)
    dm.setup("fit")
    tokens, labels = next(iter(dm.train_dataloader()))
    assert tokens.shape == (4, 4) and tokens.dtype == torch.int64 and bool((labels == -1).all())
    assert len(dm.train_set) == 24 and len(dm.val_set) == 8
    assert dm.manifest["vocabulary"]["size"] == 5
    # the most frequent lattice point, (0, 0), is token 0
    assert dm.manifest["counts"]["distinct"] == 5


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.path"):
        CodesDataModule(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        PriorModule(export_dir=str(tmp_path / "empty"))


def test_prior_is_causal_and_samples_vocabulary_codes(export_dir: Path) -> None:
    torch.manual_seed(0)
    prior = PriorModule(export_dir=str(export_dir), d_model=32, num_heads=2, dropout=0.0).eval()
    assert prior.vocab_size == 5 and prior.seq_len == 4
    torch.testing.assert_close(prior.vocab[0], torch.tensor([0, 0]))
    seq = torch.tensor([[5, 1, 2, 3]])  # BOS then tokens
    changed = seq.clone()
    changed[0, 3] = 4
    with torch.no_grad():
        torch.testing.assert_close(prior(seq)[:, :3], prior(changed)[:, :3])  # no peeking ahead
    tokens = prior.sample(3, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (3, 2, 2) and bool(((tokens >= 0) & (tokens < 5)).all())
    codes = prior.tokens_to_codes(tokens)
    assert codes.shape == (3, 2, 2, 2)
    images = sample_images(prior, CodesModel(unit_lattice(2)).eval(), 3)
    assert images.shape == (3, 2, 2, 2)


def test_prior_trains_and_reloads_without_the_export(export_dir: Path, tmp_path: Path) -> None:
    prior = PriorModule(export_dir=str(export_dir), d_model=32, num_heads=2)
    dm = CodesDataModule(str(export_dir), batch_size=8, val_fraction=0.25)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(prior, datamodule=dm)
    assert 0 < float(trainer.callback_metrics["val/bits_per_latent"]) < 10
    ckpt = tmp_path / "prior.ckpt"
    trainer.save_checkpoint(ckpt)
    for f in export_dir.iterdir():
        f.unlink()  # the checkpoint carries the manifest and the vocabulary
    reloaded = load_prior(ckpt)
    torch.testing.assert_close(reloaded.vocab, prior.vocab)
    tokens = torch.randint(0, 5, (2, 4))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.nll(tokens), prior.eval().nll(tokens))


def test_tampered_export_is_refused_by_the_datamodule(export_dir: Path) -> None:
    codes = export_dir / "codes.safetensors"
    data = codes.read_bytes()
    codes.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ExportIntegrityError, match="does not match"):
        CodesDataModule(str(export_dir)).setup("fit")

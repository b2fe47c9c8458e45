"""TextDataModule: disjoint calibration/evaluation text and seeded token windows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from llvq.data.text import TextDataModule, pydoc_documents
from llvq.llm.models import ByteTokenizer

ROOT = Path(__file__).resolve().parents[2]


def test_pydoc_texts_are_disjoint():
    dm = TextDataModule()
    calib, evaluation = dm.calibration_text(), dm.evaluation_text()
    assert len(calib) > 100_000 and len(evaluation) > 100_000
    # no 200-character passage of the evaluation text appears in the calibration text
    calib_chunks = {calib[i : i + 200] for i in range(len(calib) - 199)}
    assert not any(evaluation[i : i + 200] in calib_chunks for i in range(len(evaluation) - 199))
    # calibration is a run of whole documents; evaluation comes from the documents after it
    docs = pydoc_documents()
    cut = next(k for k in range(1, len(docs)) if "\n\n".join(docs[:k]) == calib)
    rest = "\n\n".join(docs[cut:])
    assert evaluation.split("\n\n")[0] in rest and evaluation.split("\n\n")[-1] in rest


def test_calib_fraction_moves_the_split():
    small = TextDataModule(calib_fraction=0.2).calibration_text()
    large = TextDataModule(calib_fraction=0.8).calibration_text()
    assert len(small) < len(large) and large.startswith(small)


def test_token_windows_shape_and_seed():
    tok = ByteTokenizer()
    a = TextDataModule(seq_len=64, num_calib=8, seed=0).calibration_tokens(tok)
    b = TextDataModule(seq_len=64, num_calib=8, seed=0).calibration_tokens(tok)
    c = TextDataModule(seq_len=64, num_calib=8, seed=1).calibration_tokens(tok)
    assert a.shape == (8, 64) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    dm = TextDataModule(eval_tokens=1000)
    ev = dm.evaluation_tokens(tok)
    assert ev.shape == (1000,) and ev.dtype == torch.long
    assert tok.decode(ev) == dm.evaluation_text().encode()[:1000].decode(errors="replace")
    assert TextDataModule(eval_tokens=None).evaluation_tokens(tok).numel() == len(
        dm.evaluation_text().encode()
    )


def test_dataloaders():
    dm = TextDataModule(seq_len=32, num_calib=6, batch_size=4, eval_tokens=320)
    with pytest.raises(RuntimeError, match="set_tokenizer"):
        dm.train_dataloader()
    dm.set_tokenizer(ByteTokenizer())
    batches = list(dm.train_dataloader())
    assert [tuple(b.shape) for b in batches] == [(4, 32), (2, 32)]
    assert torch.equal(torch.cat(batches), dm.calibration_tokens(ByteTokenizer()))
    assert sum(b.shape[0] for b in dm.val_dataloader()) == 10


def test_file_source(tmp_path):
    path = tmp_path / "corpus.txt"
    paragraphs = [f"paragraph {i}: " + "lorem ipsum " * 20 for i in range(10)]
    path.write_text("\n\n".join(paragraphs), encoding="utf-8")
    dm = TextDataModule(source=str(path), calib_fraction=0.5, seq_len=16, num_calib=3)
    assert dm.calibration_text() == "\n\n".join(paragraphs[:5])
    assert dm.evaluation_text() == "\n\n".join(paragraphs[5:])
    assert dm.calibration_tokens(ByteTokenizer()).shape == (3, 16)


def test_single_paragraph_file_splits_by_characters(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("abcdefghij" * 10, encoding="utf-8")
    dm = TextDataModule(source=str(path), calib_fraction=0.3)
    assert dm.calibration_text() + dm.evaluation_text() == "abcdefghij" * 10
    assert len(dm.calibration_text()) == 30


def test_missing_file(tmp_path):
    dm = TextDataModule(source=str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match="model.text.source"):
        dm.calibration_text()


def test_too_few_tokens(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("short one\n\nshort two", encoding="utf-8")
    with pytest.raises(ValueError, match="model.text.seq_len"):
        TextDataModule(source=str(path), seq_len=64).calibration_tokens(ByteTokenizer())


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"calib_fraction": 1.0}, "model.text.calib_fraction"),
        ({"calib_fraction": 0}, "model.text.calib_fraction"),
        ({"seq_len": 0}, "model.text.seq_len"),
        ({"num_calib": -1}, "model.text.num_calib"),
        ({"eval_tokens": 0}, "model.text.eval_tokens"),
        ({"batch_size": 0}, "model.text.batch_size"),
        ({"source": ""}, "model.text.source"),
    ],
)
def test_bad_arguments(kwargs, setting):
    with pytest.raises(ValueError, match=setting):
        TextDataModule(**kwargs)


def test_config_instantiates():
    cfg = OmegaConf.load(ROOT / "configs" / "data" / "text_pydoc.yaml")
    dm = instantiate(cfg)
    assert isinstance(dm, TextDataModule)
    assert (dm.source, dm.seq_len, dm.num_calib) == ("pydoc", 512, 32)

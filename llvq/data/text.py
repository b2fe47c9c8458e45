"""Text for calibrating and evaluating quantized language models.

The offline default is Python's own documentation prose, ``pydoc_data.topics.topics`` (79
documents, about 465,000 characters), sorted by key and joined with blank lines. The first
``calib_fraction`` of it (cut at a document boundary) is calibration text, the rest evaluation
text, less every paragraph that also occurs in the calibration text (some topics repeat others
verbatim), so the two never share a passage. ``wikitext2`` and ``c4`` load through the ``datasets``
package (internet needed) with their usual splits: calibration from the training split,
evaluation from the test (wikitext2) or validation (c4) split. Any other ``source`` is a path to
a UTF-8 text file, split like pydoc at a paragraph (blank line) boundary.

Calibration batches are ``num_calib`` windows of ``seq_len`` token ids drawn at seeded random
offsets from the calibration tokens; evaluation is the first ``eval_tokens`` tokens of the
evaluation text.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from llvq.data.base import require_fraction, require_int

__all__ = ["TextDataModule", "pydoc_documents"]

log = logging.getLogger(__name__)

_HUB_SOURCES = ("wikitext2", "c4")


def pydoc_documents() -> list[str]:
    """Python's documentation topics (``pydoc_data.topics.topics``), sorted by key."""
    from pydoc_data.topics import topics

    return [topics[key].strip() for key in sorted(topics)]


def _split_documents(documents: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """Split ``documents`` so that the first part holds about ``fraction`` of the characters.

    Both parts keep at least one document when there are two or more.
    """
    total = sum(len(d) for d in documents)
    target = fraction * total
    count, cut = 0, 0
    for cut, doc in enumerate(documents, start=1):
        count += len(doc)
        if count >= target:
            break
    if len(documents) >= 2:
        cut = min(max(cut, 1), len(documents) - 1)
    return documents[:cut], documents[cut:]


def _disjoint_split(documents: list[str], fraction: float) -> tuple[str, str]:
    """Calibration and evaluation text from ``documents``, split at a document boundary.

    Documents can repeat passages of one another (pydoc's ``compound`` topic holds the ``try``,
    ``while`` and ``with`` topics verbatim, for instance), so every evaluation paragraph that also
    occurs in the calibration text is dropped: the evaluation text shares no paragraph with it.
    """
    calib_docs, eval_docs = _split_documents(documents, fraction)
    seen = {p.strip() for doc in calib_docs for p in doc.split("\n\n") if p.strip()}
    kept: list[str] = []
    for doc in eval_docs:
        paragraphs = [p for p in doc.split("\n\n") if p.strip() and p.strip() not in seen]
        if paragraphs:
            kept.append("\n\n".join(paragraphs))
    return "\n\n".join(calib_docs), "\n\n".join(kept)


def _hub_texts(source: str) -> tuple[str, str]:
    """Calibration and evaluation text of ``wikitext2`` / ``c4`` through ``datasets``."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"model.text.source={source!r} needs the `datasets` package (pip install datasets) "
            "and internet access; the offline default is model.text.source=pydoc"
        ) from err
    try:
        if source == "wikitext2":
            train = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="train")
            test = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
            return "\n\n".join(train["text"]), "\n\n".join(test["text"])
        shard = "en/c4-{split}.00000-of-{n:05d}.json.gz"
        train = datasets.load_dataset(
            "allenai/c4", data_files={"train": shard.format(split="train", n=1024)}, split="train"
        )
        val = datasets.load_dataset(
            "allenai/c4",
            data_files={"validation": shard.format(split="validation", n=8)},
            split="validation",
        )
        return "\n\n".join(train["text"]), "\n\n".join(val["text"])
    except Exception as err:  # network, hub or cache errors all end here
        raise RuntimeError(
            f"could not download model.text.source={source!r} with `datasets` "
            f"({type(err).__name__}: {err}); the offline default is model.text.source=pydoc"
        ) from err


class TextDataModule(L.LightningDataModule):
    """Disjoint calibration and evaluation text, tokenized into windows for LLM quantization.

    Args:
        source: ``"pydoc"`` (offline, default), ``"wikitext2"`` or ``"c4"`` (through
            ``datasets``, internet needed), or a path to a UTF-8 text file.
        calib_fraction: share of the documents (characters) used for calibration; the rest is
            evaluation text. Ignored for ``wikitext2``/``c4``, which have their own splits.
        seq_len: tokens per calibration (and evaluation) window.
        num_calib: number of calibration windows.
        eval_tokens: cap on the evaluation tokens; ``None`` keeps them all.
        batch_size: calibration windows per batch in :meth:`train_dataloader`.
        seed: seeds the random window offsets.

    Raises:
        ValueError: naming the ``model.text.<arg>`` setting when an argument is out of range.
    """

    def __init__(
        self,
        source: str = "pydoc",
        calib_fraction: float = 0.5,
        seq_len: int = 512,
        num_calib: int = 32,
        eval_tokens: int | None = 16384,
        batch_size: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(source, (str, Path)) or not str(source):
            raise ValueError(
                "model.text.source must be 'pydoc', 'wikitext2', 'c4' or a path to a text file, "
                f"got {source!r}"
            )
        self.source = str(source)
        self.calib_fraction = require_fraction("model.text.calib_fraction", calib_fraction)
        self.seq_len = require_int("model.text.seq_len", seq_len, 2)
        self.num_calib = require_int("model.text.num_calib", num_calib, 1)
        self.eval_tokens = (
            None if eval_tokens is None else require_int("model.text.eval_tokens", eval_tokens, 2)
        )
        self.batch_size = require_int("model.text.batch_size", batch_size, 1)
        self.seed = require_int("model.text.seed", seed, 0)
        self.tokenizer: Any = None
        self._texts: tuple[str, str] | None = None
        self._calib: Tensor | None = None
        self._eval: Tensor | None = None

    # ------------------------------------------------------------------ text
    def _load_texts(self) -> tuple[str, str]:
        if self._texts is not None:
            return self._texts
        if self.source == "pydoc":
            texts = _disjoint_split(pydoc_documents(), self.calib_fraction)
        elif self.source in _HUB_SOURCES:
            texts = _hub_texts(self.source)
        else:
            path = Path(self.source).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"model.text.source={self.source!r}: no such text file (use 'pydoc', "
                    "'wikitext2', 'c4' or the path of a UTF-8 text file)"
                )
            texts = self._split_text(path.read_text(encoding="utf-8"))
        if not texts[0].strip() or not texts[1].strip():
            raise ValueError(
                f"model.text.source={self.source!r} with model.text.calib_fraction="
                f"{self.calib_fraction} leaves no calibration or no evaluation text"
            )
        self._texts = texts
        return texts

    def _split_text(self, text: str) -> tuple[str, str]:
        """Split a single text at the paragraph nearest to ``calib_fraction`` (or mid-character)."""
        paragraphs = [p for p in text.split("\n\n") if p.strip()]
        if len(paragraphs) >= 2:
            return _disjoint_split(paragraphs, self.calib_fraction)
        cut = round(self.calib_fraction * len(text))
        return text[:cut], text[cut:]

    def calibration_text(self) -> str:
        """The calibration text (disjoint from :meth:`evaluation_text`)."""
        return self._load_texts()[0]

    def evaluation_text(self) -> str:
        """The evaluation text (disjoint from :meth:`calibration_text`)."""
        return self._load_texts()[1]

    # ---------------------------------------------------------------- tokens
    def calibration_tokens(self, tokenizer: Any) -> Tensor:
        """``num_calib`` windows of ``seq_len`` tokens at seeded random offsets, int64 ``(num_calib, seq_len)``.

        Windows may overlap when the calibration text holds fewer than ``num_calib * seq_len``
        tokens (a warning says so).

        Args:
            tokenizer: a Hugging Face tokenizer or :class:`llvq.llm.models.ByteTokenizer`.

        Raises:
            ValueError: naming ``model.text.seq_len`` / ``model.text.num_calib`` when the
                calibration text holds fewer than ``seq_len`` tokens.
        """
        from llvq.llm.models import tokenize

        ids = tokenize(tokenizer, self.calibration_text())
        n = ids.numel()
        if n < self.seq_len:
            raise ValueError(
                f"the calibration text of model.text.source={self.source!r} has {n} tokens, fewer "
                f"than model.text.seq_len={self.seq_len}: lower model.text.seq_len, raise "
                "model.text.calib_fraction or use a longer text"
            )
        if n < self.num_calib * self.seq_len:
            log.warning(
                "calibration text has %d tokens < model.text.num_calib * model.text.seq_len = %d; "
                "the calibration windows overlap",
                n,
                self.num_calib * self.seq_len,
            )
        generator = torch.Generator().manual_seed(self.seed)
        starts = torch.randint(0, n - self.seq_len + 1, (self.num_calib,), generator=generator)
        offsets = starts[:, None] + torch.arange(self.seq_len)[None, :]
        return ids[offsets].contiguous()

    def evaluation_tokens(self, tokenizer: Any) -> Tensor:
        """The evaluation text's tokens, 1-D int64, capped at ``eval_tokens``.

        Args:
            tokenizer: a Hugging Face tokenizer or :class:`llvq.llm.models.ByteTokenizer`.
        """
        from llvq.llm.models import tokenize

        ids = tokenize(tokenizer, self.evaluation_text())
        if self.eval_tokens is not None:
            ids = ids[: self.eval_tokens]
        return ids.contiguous()

    # ------------------------------------------------------- LightningDataModule
    def set_tokenizer(self, tokenizer: Any) -> None:
        """Use ``tokenizer`` for the dataloaders (clears previously built windows)."""
        self.tokenizer = tokenizer
        self._calib = None
        self._eval = None

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise RuntimeError("TextDataModule needs set_tokenizer(tokenizer) before dataloaders")
        return self.tokenizer

    def setup(self, stage: str | None = None) -> None:
        """Tokenize calibration windows and evaluation windows (needs :meth:`set_tokenizer`)."""
        tokenizer = self._require_tokenizer()
        if self._calib is None:
            self._calib = self.calibration_tokens(tokenizer)
        if self._eval is None:
            ids = self.evaluation_tokens(tokenizer)
            windows = ids.numel() // self.seq_len
            if windows == 0:
                raise ValueError(
                    f"the evaluation text has {ids.numel()} tokens, fewer than model.text.seq_len="
                    f"{self.seq_len}; raise model.text.eval_tokens or lower model.text.seq_len"
                )
            self._eval = ids[: windows * self.seq_len].view(windows, self.seq_len)

    def train_dataloader(self) -> DataLoader:
        """Calibration windows, ``(batch_size, seq_len)`` int64 batches in a fixed order."""
        self.setup()
        return DataLoader(self._calib, batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        """Non-overlapping evaluation windows, ``(batch_size, seq_len)`` int64 batches."""
        self.setup()
        return DataLoader(self._eval, batch_size=self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Same as :meth:`val_dataloader`."""
        return self.val_dataloader()

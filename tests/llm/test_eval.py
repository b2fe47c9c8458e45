"""Perplexity over non-overlapping windows (tiny-llama on byte tokens)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

pytest.importorskip("transformers")

from llvq.data.text import TextDataModule
from llvq.llm.eval import perplexity
from llvq.llm.models import load_causal_lm


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("tiny-llama", seed=0)


@pytest.fixture(scope="module")
def eval_tokens(tiny):
    _, tok = tiny
    return TextDataModule(eval_tokens=1000).evaluation_tokens(tok)


def test_untrained_perplexity_is_about_vocab_size(tiny, eval_tokens):
    model, _ = tiny
    out = perplexity(model, eval_tokens, seq_len=128, batch_size=3, progress=False)
    # an untrained model is close to uniform over the 256 bytes
    assert math.isfinite(out["ppl"]) and 100 < out["ppl"] < 700
    assert out["nll"] == pytest.approx(math.log(out["ppl"]))
    assert (out["windows"], out["seq_len"], out["stride"]) == (7, 128, 128)  # 1000 // 128
    assert out["tokens"] == 7 * 127


def test_batch_size_does_not_change_the_result(tiny, eval_tokens):
    model, _ = tiny
    a = perplexity(model, eval_tokens[:400], seq_len=100, batch_size=1, progress=False)
    b = perplexity(model, eval_tokens[:400], seq_len=100, batch_size=3, progress=True)
    assert a["ppl"] == pytest.approx(b["ppl"], rel=1e-5)
    assert a["windows"] == b["windows"] == 4


def test_matches_cross_entropy_by_hand(tiny, eval_tokens):
    model, _ = tiny
    window = eval_tokens[:64]
    with torch.no_grad():
        logits = model(window[None]).logits[0]
    ce = F.cross_entropy(logits[:-1], window[1:])
    # 64..127 tokens make one window; the partial rest is dropped
    out = perplexity(model, eval_tokens[:127], seq_len=64, progress=False)
    assert out["windows"] == 1 and out["tokens"] == 63
    assert out["ppl"] == pytest.approx(math.exp(ce.item()), rel=1e-5)


def test_too_few_tokens(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="seq_len=64"):
        perplexity(model, torch.arange(63), seq_len=64, progress=False)
    with pytest.raises(ValueError, match="1-D"):
        perplexity(model, torch.zeros(2, 64, dtype=torch.long), seq_len=64, progress=False)


def test_model_mode_restored(tiny, eval_tokens):
    model, _ = tiny
    model.train()
    try:
        perplexity(model, eval_tokens[:64], seq_len=64, progress=False)
        assert model.training
    finally:
        model.eval()

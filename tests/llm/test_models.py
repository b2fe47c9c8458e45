"""Loading language models and finding their quantizable linear layers (tiny-llama only)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from llvq.llm.models import (
    ByteTokenizer,
    block_linears,
    decoder_blocks,
    load_causal_lm,
    load_tokenizer,
    quantizable_linears,
    tokenize,
)

LINEARS = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]


def test_tiny_llama_is_deterministic_by_seed():
    a, tok = load_causal_lm("tiny-llama", seed=0)
    b, _ = load_causal_lm("tiny-llama", seed=0)
    c, _ = load_causal_lm("tiny-llama", seed=1)
    assert isinstance(tok, ByteTokenizer)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(
        sa["model.layers.0.self_attn.q_proj.weight"], sc["model.layers.0.self_attn.q_proj.weight"]
    )
    assert not a.training and a.config.use_cache is False
    assert a.generation_config.use_cache is True  # generate() keeps its KV cache
    assert a.config.tie_word_embeddings is False and a.config.vocab_size == 256
    assert next(a.parameters()).dtype == torch.float32 and next(a.parameters()).device.type == "cpu"


def test_tiny_llama_dtype():
    model, _ = load_causal_lm("tiny-llama", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="model.lm.dtype"):
        load_causal_lm("tiny-llama", dtype="int8")


def test_blocks_and_linear_names():
    model, _ = load_causal_lm("tiny-llama")
    blocks = decoder_blocks(model)
    assert blocks is model.model.layers and len(blocks) == 2
    assert list(block_linears(blocks[0])) == LINEARS
    linears = quantizable_linears(model)
    assert len(linears) == 2 * 7
    assert list(linears)[:7] == [f"model.layers.0.{n}" for n in LINEARS]
    assert "lm_head" not in linears
    modules = dict(model.named_modules())
    assert all(modules[name] is layer for name, layer in linears.items())


def test_decoder_blocks_fallback():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norms = nn.ModuleList([nn.LayerNorm(4) for _ in range(5)])
            self.blocks = nn.ModuleList([Block() for _ in range(3)])

    net = Net()
    assert decoder_blocks(net) is net.blocks
    assert list(quantizable_linears(net)) == [f"blocks.{i}.fc" for i in range(3)]


def test_model_without_linear_layers():
    net = nn.Sequential(nn.Embedding(10, 4), nn.ModuleList([nn.LayerNorm(4), nn.ReLU()]))
    with pytest.raises(ValueError, match="model 'no-linears' has no linear layers to quantize"):
        quantizable_linears(net, name="no-linears")
    with pytest.raises(ValueError, match="decoder blocks"):
        decoder_blocks(net)


def test_unknown_local_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises((ValueError, FileNotFoundError), match="model.lm.name") as info:
        load_causal_lm(str(missing))
    assert str(missing) in str(info.value)


def test_directory_that_is_not_a_model(tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match="model.lm.name"):
        load_causal_lm(str(tmp_path))


def test_byte_tokenizer_round_trip(tmp_path):
    tok = ByteTokenizer()
    text = "Grüße, lattice ∑ world\n"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and max(ids) < tok.vocab_size == len(tok) == 256
    assert tok.decode(ids) == text
    t = tokenize(tok, text)
    assert t.dtype == torch.long and t.dim() == 1 and tok.decode(t) == text
    tok.save_pretrained(tmp_path / "tok")
    assert isinstance(load_tokenizer(tmp_path / "tok"), ByteTokenizer)
    assert isinstance(ByteTokenizer.from_pretrained(tmp_path / "tok"), ByteTokenizer)
    with pytest.raises(FileNotFoundError):
        ByteTokenizer.from_pretrained(tmp_path)


def test_tiny_llama_forward():
    model, tok = load_causal_lm("tiny-llama")
    ids = tokenize(tok, "hello world")[None]
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 256) and torch.isfinite(logits).all()

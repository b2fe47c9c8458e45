"""Packed GLVQ layers: bit-plane packing, the C kernels against torch, a packed tiny Llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llvq.llm import _cpacked
from llvq.llm.groups import dequantize
from llvq.llm.incoherence import unrotate
from llvq.llm.packed import (
    GLVQLinear,
    Int4Embedding,
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    int4_blocks,
    int4_dequantize,
    int8_rows,
    pack_rows,
    planes,
    row_bytes,
    unpack_rows,
)


@pytest.fixture(params=["c", "torch"])
def kernel(request, monkeypatch):
    """Run a test with the C kernels and again with the torch fallback."""
    if request.param == "torch":
        monkeypatch.setattr(_cpacked, "_KERNELS", [None])
    elif _cpacked.kernels() is None:
        pytest.skip("no C compiler: the packed kernels cannot be built")
    return request.param


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8, 9, 12])
@pytest.mark.parametrize("gs", [64, 12])
def test_planes_pack_and_unpack_exactly(bits: int, gs: int) -> None:
    assert sum(w for w, _ in planes(bits)) == bits
    assert [s for _, s in planes(bits)] == sorted(s for _, s in planes(bits))
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (3, 5, gs), generator=g)
    data, offsets, strides = pack_rows(codes, [bits] * 3)
    assert data.dtype == torch.uint8 and strides.tolist() == [row_bytes(gs, bits)] * 3
    if gs % 8 == 0:  # whole bytes: exactly `bits` bits per code
        assert data.numel() * 8 == codes.numel() * bits
    assert torch.equal(unpack_rows(data, offsets, [bits] * 3, 5, gs), codes)


def test_codes_outside_their_width_are_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        pack_rows(torch.full((1, 2, 8), 4), [2])


def _layer(out: int, inp: int, bits: list[int], compand: list[bool], seed: int | None,
           row_scale: bool = True, bias: bool = False, gs: int = 64, d: int = 8):
    """A random packed layer and the float weight (layer coordinates) it must act as."""
    g = torch.Generator().manual_seed(out + inp + len(bits))
    m = inp // gs
    codes = torch.stack([torch.randint(0, 2**b, (out * gs // d, d), generator=g) for b in bits])
    gen = (torch.eye(d) * 0.2 + 0.05 * torch.randn(m, d, d, generator=g)).half()
    mu = torch.full((m,), 40.0).half()
    scale = (torch.rand(m, generator=g) + 0.5).half()
    rs = (torch.rand(out, generator=g) + 0.5).half() if row_scale else None
    b = torch.randn(out, generator=g) if bias else None
    bits_t, mask = torch.tensor(bits), torch.tensor(compand)
    w = dequantize(codes, gen, mu, scale, rs, bits_t, mask, out, gs)
    if seed is not None:
        w = unrotate(w, seed)
    lin = GLVQLinear.from_codes(codes, gen, mu, scale, rs, bits_t, mask, out, gs, seed, b)
    return lin, w, b


@pytest.mark.parametrize("tokens", [1, 3, 20])
@pytest.mark.parametrize("seed", [None, 7])
def test_packed_layer_equals_its_dequantized_weight(kernel: str, tokens: int,
                                                    seed: int | None) -> None:
    bits = [2, 3, 4, 2, 8, 5]
    compand = [False, True, False, False, False, True]  # µ-law groups are kept as float columns
    lin, w, b = _layer(48, 384, bits, compand, seed, bias=True)
    x = torch.randn(2, tokens, 384)
    want = F.linear(x, w, b)
    top = want.abs().max()  # µ-law groups reach large values: float32 error relative to the top
    # (a few float32 ulps: the two sides sum in different orders)
    torch.testing.assert_close(lin(x) / top, want / top, atol=3e-6, rtol=0)
    top = w.abs().max()
    torch.testing.assert_close(lin.dequantized_weight() / top, w / top, atol=3e-6, rtol=0)


def test_packed_layer_without_row_scale_in_half_precision(kernel: str) -> None:
    lin, w, _ = _layer(16, 128, [3, 1], [False, False], None, row_scale=False)
    x = torch.randn(4, 128)
    y = lin(x.half())
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), F.linear(x.half().float(), w), atol=2e-2, rtol=2e-2)


def test_packed_layer_holds_a_fraction_of_the_float_weight() -> None:
    lin, w, _ = _layer(256, 512, [2] * 8, [False] * 8, 3)
    held = sum(t.numel() * t.element_size() for t in lin.buffers())
    assert held < w.numel() * 4 / 8  # 2-bit codes + side information << float32


def test_tiny_llama_packed_matches_the_dequantized_model(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from llvq.llm.io import load_quantized, save_quantized
    from tests.llm.test_glvq import TINY, _calib, _quantized_tiny

    settings = TINY.__class__(**{**TINY.__dict__, "incoherence": True})
    model, tok, ptq = _quantized_tiny(2.5, settings)
    save_quantized(tmp_path / "q", model, ptq.results, tok, settings.group_size)
    ref, _ = load_quantized(tmp_path / "q")
    packed, _ = load_quantized(tmp_path / "q", packed=True)
    layers = [m for m in packed.modules() if isinstance(m, GLVQLinear)]
    assert len(layers) == len(ptq.results)
    x = _calib(2, 48, seed=3)
    torch.testing.assert_close(packed(x).logits, ref(x).logits, atol=1e-4, rtol=1e-4)
    prompt = x[:1, :8]
    kw = {"max_new_tokens": 12, "do_sample": False, "use_cache": True, "pad_token_id": 0}
    assert torch.equal(packed.generate(prompt, **kw), ref.generate(prompt, **kw))
    # without use_cache=True, generate still keeps a KV cache: one new token per step
    fed: list[int] = []
    hook = packed.model.register_forward_pre_hook(
        lambda m, args, kwargs: fed.append(kwargs["input_ids"].shape[-1]), with_kwargs=True)
    try:
        packed.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    finally:
        hook.remove()
    assert fed == [8, 1, 1, 1]
    assert packed(prompt).past_key_values is None  # a plain forward pass builds no cache


def test_no_compiler_falls_back_with_one_warning(fresh_kernel, caplog) -> None:
    import logging

    from llvq.lattices import _ckernel

    tmp_path = fresh_kernel(_cpacked, "_KERNELS", compiler=False)
    with caplog.at_level(logging.WARNING, logger=_ckernel.__name__):
        assert _cpacked.kernels() is None
        assert _cpacked.kernels() is None
    warned = [r.getMessage() for r in caplog.records if r.name == _ckernel.__name__]
    assert len(warned) == 1 and "packed GLVQ kernels" in warned[0]
    assert list(tmp_path.glob("*.so")) == []


def _e8p_layer() -> GLVQLinear:
    """An E8P layer (identity generators and scales: its weight is the code matrix)."""
    g = torch.Generator().manual_seed(5)
    m, out, gs = 2, 17, 64
    codes = torch.randint(0, 4, (m, out * gs // 8, 8), generator=g)
    return GLVQLinear.from_codes(codes, torch.eye(8).repeat(m, 1, 1).half(),
                                 torch.zeros(m).half(), torch.ones(m).half(), None,
                                 torch.full((m,), 2), torch.zeros(m, dtype=torch.bool), out, gs,
                                 code="e8p")


def test_portable_kernels_build_and_agree(fresh_kernel, monkeypatch) -> None:
    """The fallback build (no -march=native: no AVX2 path) compiles warning-free and gives the
    same products."""
    import shutil

    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    monkeypatch.setattr(_cpacked, "_FLAGS", (["-O3", "-Wall", "-Werror"],))
    fresh_kernel(_cpacked, "_KERNELS")
    assert _cpacked.kernels() is not None
    lin, w, b = _layer(48, 384, [2, 3, 4, 2, 8, 5], [False, True] + [False] * 4, 7, bias=True)
    x = torch.randn(3, 384)
    top = F.linear(x, w, b).abs().max()
    torch.testing.assert_close(lin(x) / top, F.linear(x, w, b) / top, atol=1e-6, rtol=0)
    q, s = int8_rows(torch.randn(70, 100))
    head = Int8Linear(q, s)
    torch.testing.assert_close(head(x[:, :100]), F.linear(x[:, :100], head.dequantized_weight()),
                               atol=1e-4, rtol=1e-4)
    head4 = Int4Linear(*int4_blocks(torch.randn(70, 96)))
    torch.testing.assert_close(head4(x[:, :96]), F.linear(x[:, :96], head4.dequantized_weight()),
                               atol=1e-4, rtol=1e-4)
    e8 = _e8p_layer()
    for tokens in (1, 3):
        xe = torch.randn(tokens, e8.in_features)
        torch.testing.assert_close(e8(xe), F.linear(xe, e8.code_matrix()), atol=1e-4, rtol=1e-4)


def test_int8_rows_round_trip() -> None:
    w = torch.randn(300, 40) * torch.rand(300, 1)
    w[5] = 0
    q, s = int8_rows(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127 and s[5] == 1
    assert bool(((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-7).all())
    w[7, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        int8_rows(w)


@pytest.mark.parametrize("tokens", [1, 5, 20])
def test_int8_head_equals_its_dequantized_weight(kernel: str, tokens: int) -> None:
    g = torch.Generator().manual_seed(tokens)
    # 100: a tail after 8-wide steps; 5001 rows: a tail after the one-token kernel's 4-row steps
    q, s = int8_rows(torch.randn(5001, 100, generator=g))
    bias = torch.randn(5001, generator=g)
    head = Int8Linear(q, s, bias)
    x = torch.randn(1, tokens, 100, generator=g)
    want = F.linear(x, q.float() * s[:, None], bias)
    torch.testing.assert_close(head(x), want, atol=1e-4, rtol=1e-4)
    assert head(x.half()).dtype == torch.float16
    emb = Int8Embedding(q, s)
    ids = torch.tensor([[0, 4999, 17]])
    assert torch.equal(emb(ids), (q.float() * s[:, None])[ids])


def test_int4_blocks_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 64, generator=g) * torch.rand(300, 1, generator=g) + 3 * torch.rand(300, 1, generator=g)
    w[5] = 0.25  # a constant row: step 1, every code 0
    q, scale, low = int4_blocks(w)
    assert q.dtype == torch.uint8 and q.shape == (300, 32)
    assert scale.dtype == low.dtype == torch.float16 and scale.shape == low.shape == (300, 2)
    assert float(scale[5, 0]) == 1 and float(low[5, 0]) == 0.25 and not bool(q[5].any())
    hat = int4_dequantize(q, scale, low)
    step = scale.float().repeat_interleave(32, dim=1)
    # half a step, plus the float16 rounding of the block minimum and step (relative 2^-11)
    bound = step / 2 + (w.abs() + 15 * step) * 2.0 ** -10
    assert bool(((hat - w).abs() <= bound).all())
    codes = torch.cat([q.view(300, 2, 16) & 15, q.view(300, 2, 16) >> 4], -1)
    assert int(codes.max()) == 15 and int(codes.min()) == 0  # the grid spans each block
    assert torch.equal(int4_dequantize(q[[7, 9]], scale[[7, 9]], low[[7, 9]]), hat[[7, 9]])
    with pytest.raises(ValueError, match="multiple of the block of 32"):
        int4_blocks(torch.randn(4, 40))
    w[7, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        int4_blocks(w)


@pytest.mark.parametrize("tokens", [1, 5, 20])
def test_int4_head_equals_its_dequantized_weight(kernel: str, tokens: int) -> None:
    g = torch.Generator().manual_seed(tokens)
    table = int4_blocks(torch.randn(5001, 96, generator=g))
    bias = torch.randn(5001, generator=g)
    head = Int4Linear(*table, bias=bias)
    x = torch.randn(1, tokens, 96, generator=g)
    want = F.linear(x, int4_dequantize(*table), bias)
    torch.testing.assert_close(head(x), want, atol=1e-4, rtol=1e-4)
    assert head(x.half()).dtype == torch.float16
    emb = Int4Embedding(*table)
    ids = torch.tensor([[0, 4999, 17]])
    assert torch.equal(emb(ids), int4_dequantize(*table)[ids])


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_tiny_llama_with_quantized_embeddings(tmp_path: Path, fmt: str) -> None:
    pytest.importorskip("transformers")
    from llvq.llm.io import load_quantized, save_quantized
    from tests.llm.test_glvq import TINY, _calib, _quantized_tiny

    model, tok, ptq = _quantized_tiny(3, TINY)
    save_quantized(tmp_path / "q", model, ptq.results, tok, TINY.group_size)
    with pytest.raises(ValueError, match="embeddings"):
        load_quantized(tmp_path / "q", embeddings="int2")
    full, _ = load_quantized(tmp_path / "q")
    ref, _ = load_quantized(tmp_path / "q", embeddings=fmt)
    packed, _ = load_quantized(tmp_path / "q", packed=True, embeddings=fmt)
    inp, out = packed.get_input_embeddings(), packed.get_output_embeddings()
    classes = {"int8": (Int8Embedding, Int8Linear), "int4": (Int4Embedding, Int4Linear)}[fmt]
    assert isinstance(inp, classes[0]) and isinstance(out, classes[1])
    tied = full.get_output_embeddings().weight.data_ptr() == \
        full.get_input_embeddings().weight.data_ptr()
    assert (out.q is inp.q) == tied
    w = full.get_input_embeddings().weight.detach()
    err = (ref.get_input_embeddings().weight.detach() - w).abs().max()
    half_step = float(w.abs().max()) / (254 if fmt == "int8" else 15)  # int4: (max - min) / 30
    assert 0 < float(err) <= half_step * 1.01 + 1e-7  # rounded, by at most half a step
    x = _calib(2, 48, seed=3)
    torch.testing.assert_close(packed(x).logits, ref(x).logits, atol=1e-4, rtol=1e-4)
    prompt = x[:1, :8]
    kw = {"max_new_tokens": 12, "do_sample": False, "use_cache": True, "pad_token_id": 0}
    assert torch.equal(packed.generate(prompt, **kw), ref.generate(prompt, **kw))


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_tied_embeddings_share_one_table(fmt: str) -> None:
    transformers = pytest.importorskip("transformers")
    from llvq.llm.io import _store_embeddings

    config = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(config).eval()
    packed = transformers.LlamaForCausalLM(config).eval()
    packed.load_state_dict(ref.state_dict())
    _store_embeddings(ref, fmt, packed=False)
    _store_embeddings(packed, fmt, packed=True)
    assert packed.get_output_embeddings().q is packed.get_input_embeddings().q
    assert ref.get_output_embeddings().weight is ref.get_input_embeddings().weight
    x = torch.randint(0, 300, (2, 10))
    with torch.inference_mode():
        torch.testing.assert_close(packed(x).logits, ref(x).logits, atol=1e-4, rtol=1e-4)

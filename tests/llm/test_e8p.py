"""E8P: the codebook is 2^16 distinct points of E8 + 1/4, the structured search finds the true
nearest point, BlockLDLQ folds errors forward (and does nothing for uncorrelated inputs), the
baseline counts its bits and beats scalar 2-bit codes, and clear errors; GLVQ with E8P codes
(``model.glvq.code=e8p``) and vector feedback: lower error, exact export, clear errors."""

from __future__ import annotations

import pytest
import torch

from llvq.llm import e8p
from llvq.llm.baselines import LLM_BASELINES
from llvq.llm.glvq import quantize_layer
from llvq.llm.gptq import gptq_quantize
from llvq.llm.groups import dequantize
from llvq.llm.settings import GLVQSettings, PTQConfig
from tests.llm.test_packed import kernel  # noqa: F401  (fixture: C kernels, then torch)


def test_codebook_is_65536_distinct_points_of_e8_plus_a_quarter() -> None:
    cb = e8p.codebook()
    assert cb.shape == (65536, 8)
    assert torch.unique(cb, dim=0).shape[0] == 65536
    y = cb - 0.25
    frac = y - y.floor()
    all_int = (frac == 0).all(1)
    all_half = (frac == 0.5).all(1)
    assert bool((all_int | all_half).all())  # D8 or D8 + 1/2 ...
    assert bool((torch.remainder(y.sum(1), 2) == 0).all())  # ... with an even sum: E8
    # bounded: without its shift every point is a signed pattern of squared norm <= 12
    unshifted = torch.minimum((cb - 0.25).pow(2).sum(1), (cb + 0.25).pow(2).sum(1))
    assert float(unshifted.max()) == 12.0
    a = e8p.abs_patterns()
    assert a.shape == (256, 8) and torch.unique(a, dim=0).shape[0] == 256
    assert bool((a.pow(2).sum(1) <= 12).all())


@pytest.fixture(params=["c", "torch"])
def search(request, monkeypatch):
    """Run a test with the compiled E8P search, then with the torch one."""
    from llvq.lattices import _ce8p

    if request.param == "torch":
        monkeypatch.setattr(_ce8p, "_KERNELS", [None])
    elif _ce8p.kernels() is None:
        pytest.skip("no C compiler: the E8P kernel cannot be built")
    return request.param


@pytest.mark.parametrize("scale", [0.3, 1.0, 2.5])
def test_nearest_is_the_true_nearest_point(scale: float, search: str) -> None:
    g = torch.Generator().manual_seed(int(scale * 10))
    x = torch.randn(4000, 8, generator=g) * scale
    x[:5] = 0.0  # ties and zeros
    x[5:10] = x[5:10].round() / 2 + 0.25  # points of the codebook's lattice
    codes, pts = e8p.nearest(x, chunk=1000)
    assert codes.dtype == torch.int64 and int(codes.min()) >= 0 and int(codes.max()) < 65536
    torch.testing.assert_close(pts, e8p.decode(codes))
    best = torch.cdist(x.double(), e8p.codebook().double()).min(1).values.pow(2)
    got = (pts.double() - x.double()).pow(2).sum(1)
    torch.testing.assert_close(got, best, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="8-dimensional"):
        e8p.nearest(torch.zeros(3, 4))


def test_compiled_search_gives_the_torch_codes_on_any_thread_split(monkeypatch) -> None:
    from llvq.lattices import _ce8p

    if _ce8p.kernels() is None:
        pytest.skip("no C compiler: the E8P kernel cannot be built")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9000, 8, generator=g) * 1.7
    x[:4] = 0.0
    a = e8p.abs_patterns()
    ones = _ce8p.nearest_codes(x, a, threads=1)
    assert torch.equal(_ce8p.nearest_codes(x, a, threads=2), ones)  # 2 parts of >= 4,096 rows
    assert torch.equal(_ce8p.nearest_codes(x.double(), a, threads=1), ones)
    assert _ce8p.usable(x) and not _ce8p.usable(x[:, :4])
    assert not _ce8p.usable(x.clone().requires_grad_())
    monkeypatch.setattr(_ce8p, "_KERNELS", [None])
    torch_codes, _ = e8p.nearest(x)
    assert torch.equal(torch_codes, ones)


def test_granular_gain_over_scalar_two_bit_codes_on_gaussians() -> None:
    """2 bits per coordinate: E8P's MSE beats the best scalar 2-bit quantizer (Lloyd-Max,
    0.1175 per unit variance) on Gaussian data."""
    x = torch.randn(100_000, 8, generator=torch.Generator().manual_seed(0))
    s = 1 / 1.03
    _, pts = e8p.nearest(x / s)
    mse = float((pts * s - x).pow(2).mean())
    assert mse < 0.095


def _layer(out: int = 64, cols: int = 128, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, cols, generator=g)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    x = torch.randn(8 * cols, cols, generator=g) @ mix  # correlated inputs
    return w, x.T @ x


def _rel(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    d = (w - w_hat).double()
    return float(((d @ h.double()) * d).sum() / ((w.double() @ h.double()) * w.double()).sum())


def _plain(x: torch.Tensor, _b: int) -> tuple[torch.Tensor, torch.Tensor]:
    return e8p.nearest(x)


def test_block_ldlq_without_correlation_is_plain_nearest_and_helps_with_it() -> None:
    w, h = _layer()
    codes, q = e8p.block_ldlq(w, torch.eye(128) * 3.0, _plain, damp=0.0)
    direct, pts = e8p.nearest(w.reshape(-1, 8))
    assert torch.equal(codes.flatten(), direct)
    torch.testing.assert_close(q, pts.reshape(w.shape))
    # correlated inputs: the feedback lowers the output error of the same codebook
    _, q_fb = e8p.block_ldlq(w, h, _plain)
    assert _rel(w, q_fb, h) < 0.9 * _rel(w, pts.reshape(w.shape), h)
    with pytest.raises(ValueError, match="divisible by 8"):
        e8p.block_ldlq(w[:, :12], h[:12, :12], _plain, name="L")
    with pytest.raises(ValueError, match="H is"):
        e8p.block_ldlq(w, h[:64, :64], _plain, name="L")


def test_e8p_quantize_beats_two_bit_gptq_at_about_the_same_bits() -> None:
    w, h = _layer(seed=3)
    q, codes, scale, rows = e8p.e8p_quantize(w, h)
    assert codes.shape == (64, 16) and rows is not None and rows.dtype == torch.float32
    assert scale.to(torch.float16).float() == scale  # stored as float16, used as stored
    r = rows[:, None] * scale
    torch.testing.assert_close(q, (e8p.decode(codes) * r[..., None]).reshape(64, 128))
    q_gptq, _ = gptq_quantize(w, h, 2, 64)
    assert _rel(w, q, h) < 0.7 * _rel(w, q_gptq, h)


def test_baseline_bits_incoherence_and_errors() -> None:
    w, h = _layer(seed=4)
    w[:, 5] *= 30.0  # an outlier column: incoherence spreads it
    base = LLM_BASELINES.build("e8p", bits=2, group_size=64)
    assert base.calibrated and base.inputs == ("name",)
    out = base(w, h, name="layers.0.mlp.up_proj")
    assert out.bits == 64 * 128 * 2 + 16 + 64 * 16
    plain = LLM_BASELINES.build("e8p", bits=2, incoherence=False)(w, h, name="x")
    assert _rel(w, out.weight, h) < _rel(w, plain.weight, h)
    # the transforms follow the layer's name: same name, same result
    torch.testing.assert_close(base(w, h, name="layers.0.mlp.up_proj").weight, out.weight)
    with pytest.raises(ValueError, match="bits must be one of \\(2,\\)"):
        LLM_BASELINES.build("e8p", bits=3)
    with pytest.raises(ValueError, match="damp"):
        LLM_BASELINES.build("e8p", bits=2, damp=1.5)


def test_e8p_on_the_tiny_llama_gets_the_block_qualified_name_and_beats_rtn() -> None:
    pytest.importorskip("transformers")
    from llvq.llm.eval import perplexity
    from llvq.llm.models import load_causal_lm
    from llvq.llm.ptq import quantize_with_baseline
    from tests.llm.test_glvq import _calib

    calib, evaluation = _calib(8, 64, seed=0), _calib(8, 64, seed=1)
    names: list[str] = []

    class Recording(e8p.E8PBaseline):
        def __call__(self, w, h, name="layer"):
            names.append(name)
            return super().__call__(w, h, name=name)

    ppl = {}
    for method in ("e8p", "rtn"):
        model, _ = load_causal_lm("tiny-llama", seed=0)
        base = Recording() if method == "e8p" else LLM_BASELINES.build("rtn", bits=2, group_size=32)
        quantize_with_baseline(model, calib, base, batch_size=4)
        ppl[method] = perplexity(model, evaluation.flatten(), seq_len=64, progress=False)["ppl"]
    assert names[0].startswith("layers.0.") and any(n.startswith("layers.1.") for n in names)
    assert len(set(names)) == len(names)  # every layer its own transforms
    assert ppl["e8p"] < ppl["rtn"]


def test_glvq_with_e8p_codes_and_vector_feedback_lowers_the_output_error() -> None:
    g = torch.Generator().manual_seed(5)
    w = torch.randn(96, 256, generator=g) * (1 + torch.rand(96, 1, generator=g))
    mix = torch.randn(256, 256, generator=g) / 16 + torch.eye(256)
    x = torch.randn(1024, 256, generator=g) @ mix
    h = x.T @ x
    bits = torch.full((4,), 2)
    err = {}
    for code in ("box", "e8p"):
        for vf in (False, True):
            s = GLVQSettings(group_size=64, code=code, vector_feedback=vf, compand=False)
            res = quantize_layer(w, h, bits, s)
            assert res.code == code
            assert int(res.codes.min()) >= 0 and int(res.codes.max()) <= 3
            w_hat = dequantize(res.codes, res.generator, res.mu, res.scale, res.row_scale,
                               res.bits, res.compand, 96, 64, code)
            assert torch.equal(w_hat, res.weight)  # the stored codes give the measured weight
            assert abs(_rel(w, res.weight, h) - res.error) < 1e-4
            err[code, vf] = res.error
    assert err["e8p", False] < 0.85 * err["box", False]  # the ball beats the box at 2 bits
    assert err["box", True] < 0.98 * err["box", False]  # feedback inside the groups helps
    assert err["e8p", True] < 0.98 * err["e8p", False]


def test_glvq_e8p_export_loads_exactly_and_packed_matches(tmp_path) -> None:
    from llvq.llm.groups import model_weight
    from llvq.llm.io import load_quantized, save_quantized
    from llvq.llm.packed import GLVQLinear
    from llvq.llm.ptq import layer_storage_bits
    from tests.llm.test_glvq import _calib, _quantized_tiny

    s = GLVQSettings(group_size=64, lattice_dim=8, row_scale=True, max_outer=2, inner_steps=2,
                     code="e8p", vector_feedback=True, compand=False, incoherence=True)
    model, tok, ptq = _quantized_tiny(2, s)
    numel = sum(r.weight.numel() for r in ptq.results.values())
    used = sum(layer_storage_bits(r) for r in ptq.results.values())
    assert all(bool((r.bits == 2).all()) for r in ptq.results.values())
    assert 2.0 < used / numel < 2.6  # 16 bits per 8 weights plus the generators (tiny layers)
    manifest = save_quantized(tmp_path / "q", model, ptq.results, tok, 64)
    assert {m["code"] for m in manifest["layers"].values()} == {"e8p"}
    loaded, _ = load_quantized(tmp_path / "q")
    for name, p in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p), name
    x = _calib(1, 32, seed=3)
    assert torch.equal(loaded(x).logits, model(x).logits)
    packed, _ = load_quantized(tmp_path / "q", packed=True)  # codes stay packed in memory
    layers = [m for m in packed.modules() if isinstance(m, GLVQLinear)]
    assert len(layers) == len(ptq.results) and all(m.code == "e8p" for m in layers)
    torch.testing.assert_close(packed(x).logits, model(x).logits, atol=1e-4, rtol=1e-4)
    lin = next(iter(ptq.results.values()))
    layer = GLVQLinear.from_result(lin, 64)
    torch.testing.assert_close(layer.dequantized_weight(), model_weight(lin), atol=1e-5, rtol=1e-5)


def test_glvq_e8p_settings_errors() -> None:
    with pytest.raises(ValueError, match="model.glvq.code must be one of box, e8p"):
        GLVQSettings(code="d8")
    with pytest.raises(ValueError, match="set model.glvq.lattice_dim=8"):
        GLVQSettings(code="e8p", lattice_dim=4)
    with pytest.raises(ValueError, match="model.glvq.code=e8p codes exactly 2 bits.*model.bits=2"):
        PTQConfig(bits=3, glvq={"code": "e8p"})
    with pytest.raises(TypeError, match="model.glvq.vector_feedback must be true or false"):
        GLVQSettings(vector_feedback="yes")


def test_glvq_e8p_result_survives_the_resume_checkpoint() -> None:
    from llvq.modules.llm_ptq import _result_to_state, _state_to_result

    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    s = GLVQSettings(group_size=64, code="e8p", max_outer=1, inner_steps=1)
    res = quantize_layer(w, torch.eye(64), torch.full((1,), 2), s)
    back = _state_to_result(_result_to_state(res), 64)
    assert back.code == "e8p" and torch.equal(back.weight, res.weight)


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize("tokens", [1, 5])
@pytest.mark.parametrize("gs", [64, 48])  # 48: rows not in whole 8-byte words (the general gather)
def test_packed_e8p_layer_equals_the_dequantized_weight(tokens: int, gs: int) -> None:
    from llvq.llm.packed import GLVQLinear

    g = torch.Generator().manual_seed(4)
    m, out = 3, 25  # odd: the one-token kernel takes rows two at a time
    codes = torch.randint(0, 4, (m, out * gs // 8, 8), generator=g).to(torch.int16)
    gen = (torch.eye(8) + 0.1 * torch.randn(m, 8, 8, generator=g)).half()
    mu, scale = torch.full((m,), 30.0).half(), torch.rand(m, generator=g).half() + 0.5
    rows = (torch.rand(out, generator=g) + 0.5).half()
    compand = torch.tensor([False, True, False])  # a companding group is kept dense
    bits = torch.full((m,), 2)
    w = dequantize(codes, gen, mu, scale, rows, bits, compand, out, gs, "e8p")
    layer = GLVQLinear.from_codes(codes, gen, mu, scale, rows, bits, compand, out, gs, code="e8p")
    torch.testing.assert_close(layer.dequantized_weight(), w, atol=1e-5, rtol=1e-5)
    x = torch.randn(tokens, m * gs, generator=g)
    torch.testing.assert_close(layer(x), x @ w.T, atol=1e-4, rtol=1e-4)

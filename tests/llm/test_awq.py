"""AWQ: never worse than RTN on its loss, clearly better with salient inputs, RTN's bits, the
clip rule for query/key layers, the mean |x| of the block walk, and clear errors."""

from __future__ import annotations

import pytest
import torch

from llvq.llm.awq import AWQBaseline, awq_quantize
from llvq.llm.baselines import LLM_BASELINES, apply_baseline, rtn_quantize


def _layer(out: int = 48, cols: int = 128, seed: int = 0):
    """A weight and the statistics of inputs with a few large (salient) channels."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, cols, generator=g)
    mag = torch.ones(cols)
    mag[torch.randperm(cols, generator=g)[:6]] = 20.0  # activation outliers, as in LLMs
    x = torch.randn(8 * cols, cols, generator=g) * mag
    return w, x.T @ x, x.abs().mean(0)


def _out_err(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    d = w - w_hat
    return float(torch.trace(d @ h @ d.T) / torch.trace(w @ h @ w.T))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_awq_beats_rtn_on_the_output_error_with_salient_inputs(bits: int) -> None:
    w, h, m = _layer(seed=bits)
    w_awq, bpw, a = awq_quantize(w, h, m, bits, group_size=32)
    w_rtn, bpw_rtn = rtn_quantize(w, bits, 32)
    assert bpw == bpw_rtn  # the scales are folded into the layer before: no bits
    assert a > 0  # the search moved off plain rounding
    assert _out_err(w, w_awq, h) < 0.7 * _out_err(w, w_rtn, h)


def test_without_duo_scaling_or_clip_the_search_is_never_worse_than_rtn() -> None:
    """Exponent 0 without duo scaling is plain RTN, and the search keeps the best it saw."""
    w, _, _ = _layer(seed=5)
    h = torch.eye(w.shape[1])  # equal, uncorrelated inputs: nothing to gain
    m = torch.ones(w.shape[1])
    w_awq, _, a = awq_quantize(w, h, m, 3, 32, duo_scaling=False, clip=False)
    assert a == 0.0
    assert torch.equal(w_awq, rtn_quantize(w, 3, 32)[0])


def test_clip_search_lowers_the_error_and_skips_query_and_key() -> None:
    w, h, m = _layer(seed=7)
    w[:, 3] *= 8.0  # a weight outlier that widens its groups' range
    plain, _, _ = awq_quantize(w, h, m, 3, 32, clip=False)
    clipped, _, _ = awq_quantize(w, h, m, 3, 32, clip=True, name="model.layers.0.mlp.up_proj")
    assert _out_err(w, clipped, h) < _out_err(w, plain, h)
    for name in ("model.layers.0.self_attn.q_proj", "encoder.layer.1.attention.self.key"):
        assert torch.equal(awq_quantize(w, h, m, 3, 32, clip=True, name=name)[0], plain)


def test_bad_input_is_named() -> None:
    w, h, m = _layer()
    with pytest.raises(ValueError, match="group_size=48 does not divide"):
        awq_quantize(w, h, m, 3, 48, name="L")
    with pytest.raises(ValueError, match="abs_mean"):
        awq_quantize(w, h, m[:-1], 3, 32, name="L")
    with pytest.raises(ValueError, match="bits must be"):
        AWQBaseline(bits=0)
    awq = LLM_BASELINES.build("awq", bits=3, group_size=32)
    with pytest.raises(ValueError, match="mean \\|x\\|"):
        awq(w, h)
    lin = torch.nn.Linear(128, 48, bias=False)
    with pytest.raises(ValueError, match="needs calibration data"):
        apply_baseline({"x": lin}, awq)


def test_block_walk_gives_mean_abs_inputs_and_beats_rtn_on_the_tiny_llama() -> None:
    pytest.importorskip("transformers")
    from llvq.llm.eval import perplexity
    from llvq.llm.models import load_causal_lm, quantizable_linears
    from llvq.llm.ptq import CalibrationWalk, quantize_with_baseline
    from tests.llm.test_glvq import _calib

    calib, evaluation = _calib(8, 64, seed=0), _calib(8, 64, seed=1)
    # the walk's mean |x| is the mean over every calibration token of the layer's input
    model, _ = load_causal_lm("tiny-llama", seed=0)
    walk = CalibrationWalk(model, calib, batch_size=4)
    walk.capture_inputs()
    name, lin = next(iter(walk.layers[0].items()))
    seen = []
    hook = lin.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].reshape(-1, inp[0].shape[-1])))
    means: dict[str, torch.Tensor] = {}
    hs = walk.hessians(0, means)
    hook.remove()
    x = torch.cat(seen).double()
    torch.testing.assert_close(means[name], x.abs().mean(0))
    torch.testing.assert_close(hs[name], x.T @ x)

    ppl, built = {}, {}
    for method in ("awq", "rtn"):
        model, _ = load_causal_lm("tiny-llama", seed=0)
        baseline = built[method] = LLM_BASELINES.build(method, bits=2, group_size=32)
        info = quantize_with_baseline(model, calib, baseline, batch_size=4)
        numel = sum(m.weight.numel() for m in quantizable_linears(model).values())
        assert info["bits_per_weight"] == pytest.approx(2 + 18 / 32)
        assert info["weights"] == numel
        ppl[method] = perplexity(model, evaluation.flatten(), seq_len=64, progress=False)["ppl"]
    assert len(built["awq"].exponents) == len(quantizable_linears(model))
    assert ppl["awq"] < ppl["rtn"]

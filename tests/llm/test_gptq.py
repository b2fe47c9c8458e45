"""GPTQ: the grid, the bit count, act-order, beats RTN on correlated inputs, the block walk."""

from __future__ import annotations

import pytest
import torch

from llvq.llm.baselines import LLM_BASELINES, apply_baseline, rtn_quantize
from llvq.llm.gptq import GPTQBaseline, _grid, _quant, gptq_quantize, gptq_storage_bits


def _layer(out: int = 48, cols: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and the second moment of strongly correlated, unequally scaled inputs."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, cols, generator=g)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    x = torch.randn(4 * cols, cols, generator=g) @ mix * torch.linspace(0.2, 3.0, cols)
    return w, x.T @ x


def _out_err(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    d = w - w_hat
    return float(torch.trace(d @ h @ d.T) / torch.trace(w @ h @ w.T))


def test_diagonal_h_is_round_to_nearest_on_gptqs_grid() -> None:
    """With a diagonal H there is no error to feed forward: every group is plain rounding."""
    w, _ = _layer()
    h = torch.diag(torch.linspace(1.0, 2.0, w.shape[1]))
    w_hat, _ = gptq_quantize(w, h, bits=3, group_size=32)
    for g in range(0, w.shape[1], 32):
        scale, zero = _grid(w[:, g:g + 32], 7)
        ref = _quant(w[:, g:g + 32], scale[:, None], zero[:, None], 7)
        assert torch.equal(w_hat[:, g:g + 32], ref)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_the_output_error(bits: int, act_order: bool) -> None:
    w, h = _layer(seed=bits)
    w_gptq, _ = gptq_quantize(w, h, bits, group_size=32, act_order=act_order)
    w_rtn, _ = rtn_quantize(w, bits, 32)
    assert _out_err(w, w_gptq, h) < 0.8 * _out_err(w, w_rtn, h)


def test_act_order_with_static_groups_and_diagonal_h_changes_nothing() -> None:
    """Static groups are the original column groups, so the order only matters through H."""
    w, _ = _layer()
    h = torch.diag(torch.rand(w.shape[1], generator=torch.Generator().manual_seed(3)) + 0.5)
    plain, _ = gptq_quantize(w, h, 3, 32)
    ordered, _ = gptq_quantize(w, h, 3, 32, act_order=True, static_groups=True)
    assert torch.equal(plain, ordered)


def test_lazy_blocks_do_not_change_the_result() -> None:
    w, h = _layer()
    a, _ = gptq_quantize(w, h, 3, 32, block_size=128)
    b, _ = gptq_quantize(w, h, 3, 32, block_size=32)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_bits_are_counted_as_gptq_stores_them() -> None:
    assert gptq_storage_bits(10, 128, 4, 64, False) == 10 * 128 * 4 + 10 * 2 * (16 + 4)
    assert gptq_storage_bits(10, 128, 4, 64, True) == 10 * 128 * 4 + 10 * 2 * 20 + 32 * 128
    w, h = _layer()
    assert gptq_quantize(w, h, 2, 32, act_order=True)[1] == gptq_storage_bits(48, 128, 2, 32, True)
    assert gptq_quantize(w, h, 2, 32, act_order=True, static_groups=True)[1] \
        == gptq_storage_bits(48, 128, 2, 32, False)
    _, rtn_bpw = rtn_quantize(w, 2, 32)
    assert rtn_bpw == pytest.approx(gptq_storage_bits(48, 128, 2, 32, False) / w.numel())


def test_dead_inputs_are_zeroed_and_bad_settings_named() -> None:
    w, h = _layer()
    h[5, :] = 0
    h[:, 5] = 0
    w_hat, _ = gptq_quantize(w, h, 3, 32)
    assert torch.isfinite(w_hat).all() and bool((w_hat[:, 5].abs() <= w_hat.abs().max()).all())
    ragged, bits = gptq_quantize(w, h, 3, 48)  # 48 + 48 + 32 columns, as the reference does
    assert torch.isfinite(ragged).all() and bits == gptq_storage_bits(48, 128, 3, 48, False)
    assert gptq_storage_bits(48, 128, 3, 48, False) == 48 * 128 * 3 + 48 * 3 * 19
    with pytest.raises(ValueError, match="group_size must be"):
        gptq_quantize(w, h, 3, 0)
    with pytest.raises(ValueError, match="H is"):
        gptq_quantize(w, h[:64, :64], 3, 32)
    with pytest.raises(ValueError, match="bits must be"):
        LLM_BASELINES.build("gptq", bits=12)


def test_gptq_is_registered_and_needs_calibration() -> None:
    gptq = LLM_BASELINES.build("gptq", bits=3, group_size=32, act_order=True)
    assert isinstance(gptq, GPTQBaseline) and gptq.calibrated
    lin = torch.nn.Linear(64, 8, bias=False)
    with pytest.raises(ValueError, match="needs calibration"):
        apply_baseline({"x": lin}, gptq)


def test_block_walk_on_the_tiny_llama_beats_rtn() -> None:
    pytest.importorskip("transformers")
    from llvq.llm.eval import perplexity
    from llvq.llm.models import load_causal_lm, quantizable_linears
    from llvq.llm.ptq import quantize_with_baseline
    from tests.llm.test_glvq import _calib

    calib, evaluation = _calib(8, 64, seed=0), _calib(8, 64, seed=1)
    ppl = {}
    for name in ("gptq", "rtn"):
        model, _ = load_causal_lm("tiny-llama", seed=0)
        baseline = LLM_BASELINES.build(name, bits=2, group_size=32)
        info = quantize_with_baseline(model, calib, baseline, batch_size=4)
        numel = sum(m.weight.numel() for m in quantizable_linears(model).values())
        assert info["weights"] == numel
        assert info["bits_per_weight"] == pytest.approx(2 + 18 / 32)
        ppl[name] = perplexity(model, evaluation.flatten(), seq_len=64, progress=False)["ppl"]
    assert ppl["gptq"] < ppl["rtn"]


def test_train_py_measures_gptq_next_to_glvq(compose_cfg) -> None:
    pytest.importorskip("transformers")
    from llvq.runner import run

    cfg = compose_cfg("experiment=glvq_tiny", "logger=csv", "callbacks=none", "model.bits=2",
                      "model.eval.fp=false", "model.eval.baselines=[rtn,gptq]",
                      "model.glvq.max_outer=2", "model.text.eval_tokens=512")
    metrics = run(cfg)
    assert metrics["final/bits_gptq"] == pytest.approx(2 + 18 / 64)
    assert metrics["final/bits_rtn"] == pytest.approx(2 + 18 / 64)
    assert metrics["final/ppl_gptq"] != metrics["final/ppl_rtn"]  # calibrated, not RTN again
    assert metrics["final/bits"] <= 2.0

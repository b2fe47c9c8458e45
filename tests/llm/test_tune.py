"""Tuning the float parameters a quantized model keeps (``model.tune``)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from llvq.llm.groups import dequantize, model_weight
from llvq.llm.models import load_causal_lm, quantizable_linears
from llvq.llm.ptq import layer_storage_bits
from llvq.llm.settings import PTQConfig, TuneSettings
from llvq.llm.tune import scale_tuning, tunable_parameters, tune_float_parameters
from tests.llm.test_glvq import TINY, _calib, _quantized_tiny


def _kl(model, teacher, x) -> float:
    with torch.no_grad():
        t = F.log_softmax(teacher(x).logits, -1)
        s = F.log_softmax(model(x).logits, -1)
    return float(F.kl_div(s.flatten(0, 1), t.flatten(0, 1), log_target=True,
                          reduction="batchmean"))


def test_tuning_moves_only_the_float_parameters_toward_the_teacher() -> None:
    pytest.importorskip("transformers")
    model, _, _ = _quantized_tiny(2)
    teacher, _ = load_causal_lm("tiny-llama", seed=0)
    names = set(tunable_parameters(model))
    assert names and all(p.ndim == 1 for p in tunable_parameters(model).values())
    assert not any("embed" in n or "lm_head" in n for n in names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    held_out = _calib(4, 64, seed=9)
    kl0 = _kl(model, teacher, held_out)
    s = TuneSettings(steps=40, lr=5e-3, batch_size=2, seq_len=32)
    losses = tune_float_parameters(model, teacher, _calib(8, 64), s, progress=False)
    assert len(losses) == 40
    assert _kl(model, teacher, held_out) < kl0  # closer to the teacher on unseen text
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= names  # no quantized weight, no embedding moved
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert flags == {n: True for n in flags}  # as they were before tuning
    assert set(quantizable_linears(model)).isdisjoint(n.removesuffix(".weight") for n in changed)
    # the same settings give the same parameters (the LLM job re-runs it after a resume)
    again, _, _ = _quantized_tiny(2)
    tune_float_parameters(again, teacher, _calib(8, 64), s, progress=False)
    for n in names:
        assert torch.equal(dict(again.named_parameters())[n], dict(model.named_parameters())[n])


def test_bad_input_names_the_setting() -> None:
    pytest.importorskip("transformers")
    model, _ = load_causal_lm("tiny-llama", seed=0)
    with pytest.raises(ValueError, match="model.tune.seq_len=256"):
        tune_float_parameters(model, model, _calib(2, 64), TuneSettings(steps=1), progress=False)
    with pytest.raises(ValueError, match="lower model.tune.lr"):
        tune_float_parameters(model, model, _calib(2, 64),
                              TuneSettings(steps=3, lr=1e30, seq_len=32), progress=False)


@pytest.mark.parametrize(("tune", "match"), [
    ({"steps": -1}, "model.tune.steps"), ({"lr": 0}, "model.tune.lr"),
    ({"seq_len": 1}, "model.tune.seq_len"), ({"stesp": 3}, r"model\.tune\.stesp"),
    ({"codebook": "yes"}, "model.tune.codebook"),
])
def test_bad_tune_settings(tune, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        PTQConfig(tune=tune)


def _tuning_case(settings):
    """A quantized tiny Llama, its teacher, held-out text with the logits and KL before tuning."""
    model, _, ptq = _quantized_tiny(2, settings)
    teacher, _ = load_causal_lm("tiny-llama", seed=0)
    held_out = _calib(4, 64, seed=9)
    with torch.no_grad():
        logits = model(held_out).logits
    return model, ptq, teacher, held_out, logits, _kl(model, teacher, held_out)


def _tune_checked(case, group_size: int, codebook: bool = False):
    """Tune a :func:`_tuning_case` under :func:`scale_tuning`, checking that the tuning layers
    start as the quantized model, are put back, and lower the KL; ``(layers, tuned names)``."""
    model, ptq, teacher, held_out, logits, kl0 = case
    layers = ptq.named_layers()
    s = TuneSettings(steps=30, lr=5e-3, batch_size=2, seq_len=32)
    with scale_tuning(model, layers, group_size, ptq.results, codebook=codebook):
        tuned = list(tunable_parameters(model))
        with torch.no_grad():  # the tuning layers start as the quantized model
            torch.testing.assert_close(model(held_out).logits, logits, atol=1e-4, rtol=1e-4)
        tune_float_parameters(model, teacher, _calib(8, 64), s, progress=False)
    assert set(quantizable_linears(model).values()) == set(layers.values())  # put back
    assert _kl(model, teacher, held_out) < kl0
    return layers, tuned


@pytest.mark.parametrize("incoherence", [False, True])
def test_scale_tuning_moves_only_the_stored_scales(incoherence: bool) -> None:
    pytest.importorskip("transformers")
    settings = replace(TINY, row_scale=True, incoherence=incoherence)
    case = _tuning_case(settings)
    ptq = case[1]
    before = {n: (r.codes.clone(), r.scale.clone(), r.row_scale.clone(), layer_storage_bits(r))
              for n, r in ptq.results.items()}
    layers, tuned = _tune_checked(case, settings.group_size)
    assert len([n for n in tuned if n.endswith((".row", ".col"))]) == 2 * len(layers)
    moved = 0
    for n, r in ptq.results.items():
        codes, scale, row, bits = before[n]
        assert torch.equal(r.codes, codes) and layer_storage_bits(r) == bits
        assert r.scale.dtype == scale.dtype and r.row_scale.dtype == row.dtype
        moved += int(not torch.equal(r.scale, scale)) + int(not torch.equal(r.row_scale, row))
        stored = dequantize(r.codes, r.generator, r.mu, r.scale, r.row_scale, r.bits, r.compand,
                            r.weight.shape[0], settings.group_size)
        assert torch.equal(r.weight, stored)  # the model is what the stored scales give
        assert torch.equal(layers[n].weight, model_weight(r))
    assert moved > len(ptq.results)


@pytest.mark.parametrize(("incoherence", "code"), [(False, "box"), (True, "box"), (True, "e8p")])
def test_codebook_tuning_moves_generators_and_mu_not_codes(incoherence: bool, code: str) -> None:
    pytest.importorskip("transformers")
    settings = replace(TINY, row_scale=True, incoherence=incoherence, code=code,
                       lattice_dim=8 if code == "e8p" else TINY.lattice_dim)
    case = _tuning_case(settings)
    ptq = case[1]
    before = {n: (r.codes.clone(), r.generator.clone(), r.mu.clone(), layer_storage_bits(r))
              for n, r in ptq.results.items()}
    layers, tuned = _tune_checked(case, settings.group_size, codebook=True)
    assert sum(n.endswith(".delta") for n in tuned) == len(layers)
    assert sum(n.endswith(".mu_logit") for n in tuned) == len(layers)
    moved = 0
    for n, r in ptq.results.items():
        codes, generator, mu, bits = before[n]
        assert torch.equal(r.codes, codes) and layer_storage_bits(r) == bits
        assert r.generator.dtype == generator.dtype == torch.float16
        assert r.mu.dtype == mu.dtype
        assert torch.equal(r.mu[~r.compand], mu[~r.compand])  # µ of groups that do not compand
        moved += int(not torch.equal(r.generator, generator))
        stored = dequantize(r.codes, r.generator, r.mu, r.scale, r.row_scale, r.bits, r.compand,
                            r.weight.shape[0], settings.group_size, r.code)
        assert torch.equal(r.weight, stored)  # the model is what the stored values give
        assert torch.equal(layers[n].weight, model_weight(r))
    assert moved == len(ptq.results)


def test_codebook_tuning_needs_glvq_layers() -> None:
    lin = torch.nn.Linear(64, 8)
    model = torch.nn.Sequential(lin)
    with pytest.raises(ValueError, match="model.tune.codebook"), \
            scale_tuning(model, {"0": lin}, 32, codebook=True):
        pass


def test_group_scale_tuning_for_a_baseline() -> None:
    pytest.importorskip("transformers")
    model, _ = load_causal_lm("tiny-llama", seed=0)
    teacher, _ = load_causal_lm("tiny-llama", seed=0)
    layers = quantizable_linears(model)
    with torch.no_grad():  # a stand-in for RTN/GPTQ weights: the teacher's, coarsened
        for lin in layers.values():
            lin.weight.copy_(torch.round(lin.weight * 8) / 8)
    weights = {n: lin.weight.detach().clone() for n, lin in layers.items()}
    x = _calib(4, 64, seed=9)
    kl0 = _kl(model, teacher, x)
    with scale_tuning(model, layers, 32):
        tune_float_parameters(model, teacher, _calib(8, 64),
                              TuneSettings(steps=20, lr=5e-3, seq_len=32), progress=False)
    assert _kl(model, teacher, x) < kl0
    for n, lin in layers.items():  # each (row, group of 32 columns) block moved by one factor
        new, old = (t.view(t.shape[0], -1, 32) for t in (lin.weight.detach(), weights[n]))
        f = (new * old).sum(-1, keepdim=True) / old.square().sum(-1, keepdim=True).clamp_min(1e-12)
        torch.testing.assert_close(new, f * old, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(f, torch.ones_like(f))
    with pytest.raises(ValueError, match="group_size=48 does not divide"), \
            scale_tuning(model, layers, 48):
        pass


@pytest.mark.parametrize("incoherence", [False, True])
def test_e8p_row_scale_tuning_keeps_codes_and_float16_scales(incoherence: bool) -> None:
    pytest.importorskip("transformers")
    from llvq.llm.e8p import E8PBaseline, decode, nearest
    from llvq.llm.incoherence import unrotate
    from llvq.llm.models import block_linears, decoder_blocks
    from llvq.llm.ptq import quantize_with_baseline

    model, _ = load_causal_lm("tiny-llama", seed=0)
    teacher, _ = load_causal_lm("tiny-llama", seed=0)
    baseline = E8PBaseline(incoherence=incoherence, keep=True)
    quantize_with_baseline(model, _calib(4, 64), baseline, batch_size=2)
    layers = {f"layers.{i}.{n}": lin for i, block in enumerate(decoder_blocks(model))
              for n, lin in block_linears(block).items()}
    assert set(baseline.layers) == set(layers)

    def points(e) -> torch.Tensor:  # the E8P points the stored weight is made of
        r = e.row_scale.float()[:, None] * e.layer_scale.float()
        return (e.weight / r).reshape(-1, 8)

    before = {n: (points(e), e.row_scale.clone()) for n, e in baseline.layers.items()}
    for p, _ in before.values():  # the kept weight is diag(rs) s P: exactly codebook points
        torch.testing.assert_close(p, decode(nearest(p)[0]), atol=1e-4, rtol=0)
    held_out = _calib(4, 64, seed=9)
    with torch.no_grad():
        logits = model(held_out).logits
    kl0 = _kl(model, teacher, held_out)
    with scale_tuning(model, layers, 16, baseline.layers):
        assert sum(n.endswith(".row") for n in tunable_parameters(model)) == len(layers)
        with torch.no_grad():  # starts as the quantized model
            torch.testing.assert_close(model(held_out).logits, logits, atol=1e-4, rtol=1e-4)
        tune_float_parameters(model, teacher, _calib(8, 64),
                              TuneSettings(steps=20, lr=5e-3, batch_size=2, seq_len=32),
                              progress=False)
    assert _kl(model, teacher, held_out) < kl0
    moved = 0
    for n, e in baseline.layers.items():
        p, rs = before[n]
        assert e.row_scale.dtype == torch.float16
        moved += int(not torch.equal(e.row_scale, rs))
        torch.testing.assert_close(points(e), p, atol=1e-4, rtol=0)  # codes unchanged
        w = unrotate(e.weight, e.seed) if incoherence else e.weight
        torch.testing.assert_close(layers[n].weight.detach(), w, atol=1e-6, rtol=1e-5)
    assert moved == len(layers)
    no_rows = E8PBaseline(row_scale=False, keep=True)
    quantize_with_baseline(model, _calib(2, 64), no_rows, batch_size=2)
    with pytest.raises(ValueError, match="without row scales"), \
            scale_tuning(model, layers, 16, no_rows.layers):
        pass


def test_hidden_state_objective_tunes_an_encoder() -> None:
    transformers = pytest.importorskip("transformers")
    import copy

    from llvq.llm.tune import _distance

    cfg = transformers.BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=64)
    torch.manual_seed(0)
    teacher = transformers.BertModel(cfg).eval()
    model = copy.deepcopy(teacher)
    layers = quantizable_linears(model)
    with torch.no_grad():
        for lin in layers.values():
            lin.weight.copy_(torch.round(lin.weight * 32) / 32)
    calib = torch.randint(0, 300, (16, 32), generator=torch.Generator().manual_seed(1))
    held_out = torch.randint(0, 300, (8, 32), generator=torch.Generator().manual_seed(2))

    def gap() -> float:
        with torch.no_grad():
            return float(_distance(model(held_out), teacher(held_out), "hidden"))

    before = gap()
    with scale_tuning(model, layers, 16):
        losses = tune_float_parameters(model, teacher, calib, TuneSettings(
            steps=30, lr=5e-3, batch_size=4, seq_len=32), progress=False, objective="hidden")
    assert losses[-1] < losses[0] and gap() < before
    with pytest.raises(ValueError, match="'kl' or 'hidden'"):
        tune_float_parameters(model, teacher, calib, TuneSettings(steps=1, seq_len=32),
                              progress=False, objective="mse")
    with pytest.raises(TypeError, match="last_hidden_state"):
        _distance(torch.zeros(2, 3), torch.zeros(2, 3), "hidden")

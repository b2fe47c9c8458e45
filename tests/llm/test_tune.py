"""Tuning the float parameters a quantized model keeps (``model.tune``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llvq.llm.models import load_causal_lm, quantizable_linears
from llvq.llm.settings import PTQConfig, TuneSettings
from llvq.llm.tune import tunable_parameters, tune_float_parameters
from tests.llm.test_glvq import _calib, _quantized_tiny


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
])
def test_bad_tune_settings(tune, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        PTQConfig(tune=tune)

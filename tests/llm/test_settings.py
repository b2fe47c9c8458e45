"""Nested PTQ settings, the LLM baseline registry and the module as a step job."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llvq.llm.baselines import LLM_BASELINES, BaselineOutput, apply_baseline, rtn_quantize
from llvq.llm.settings import EvalSettings, GLVQSettings, PTQConfig
from llvq.registry import RegistryError


def test_config_from_nested_mappings_round_trips() -> None:
    cfg = PTQConfig(lm={"name": "tiny-llama"}, bits=3, glvq={"group_size": 64, "lattice_dim": 4},
                    eval={"baselines": ["rtn"], "fp": False})
    assert isinstance(cfg.glvq, GLVQSettings) and cfg.glvq.group_size == 64
    assert isinstance(cfg.eval, EvalSettings) and cfg.eval.baselines == {"rtn": {}}
    assert cfg.bits == 3.0 and isinstance(cfg.bits, float)
    d = cfg.to_dict()
    assert PTQConfig(**d) == cfg
    assert isinstance(d["glvq"]["init_scales"], list)  # plain python for the checkpoint


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"glvq": {"groupsize": 64}}, r"unknown setting\(s\) model\.glvq\.groupsize"),
    ({"glvq": {"lattice_dim": 3}}, "model.glvq.lattice_dim"),
    ({"glvq": {"max_outer": -1}}, "model.glvq.max_outer"),
    ({"glvq": {"compand": "yes"}}, "model.glvq.compand"),
    ({"bits": 0.5}, "model.bits"),
    ({"bits": True}, "model.bits"),
    ({"calib_batch_size": 0}, "model.calib_batch_size"),
    ({"calib_offload": 3}, "model.calib_offload"),
    ({"calib_offload": ""}, "model.calib_offload"),
    ({"eval": {"batch_size": 0}}, "model.eval.batch_size"),
    ({"eval": {"baselines": ["nope"]}}, "unknown LLM baseline 'nope'"),
    ({"lm": {"name": ""}}, "model.lm.name"),
    ({"lm": {"nme": "x"}}, "model.lm.nme"),
])
def test_bad_settings_name_the_setting(kwargs, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        PTQConfig(**kwargs)


def test_module_is_a_step_job_rebuilt_from_its_hparams() -> None:
    from llvq.modules import LLMPTQModule
    from llvq.modules.step_job import StepJob

    m = LLMPTQModule(bits=3, glvq={"group_size": 64, "lattice_dim": 4}, eval={"fp": False})
    assert isinstance(m, StepJob) and not m.automatic_optimization
    assert list(m.parameters()) == [] and m.configure_optimizers() == []
    again = LLMPTQModule(**dict(m.hparams))
    assert again.config == m.config
    assert LLMPTQModule(config=m.config).config == m.config


def test_rtn_is_registered_and_strict() -> None:
    assert "rtn" in LLM_BASELINES.names() and "hqq" in LLM_BASELINES.names()
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    out = LLM_BASELINES.build("rtn", bits=2, group_size=32)(w)
    w_hat, bpw = rtn_quantize(w, 2, 32)
    assert torch.equal(out.weight, w_hat) and out.bits == bpw * w.numel()
    with pytest.raises(RegistryError, match="'group'"):
        LLM_BASELINES.build("rtn", bits=2, group=32)
    with pytest.raises(ValueError, match="bits must be"):
        LLM_BASELINES.build("rtn", bits=1.5)


def test_hqq_missing_gives_a_clear_message() -> None:
    pytest.importorskip("torch")
    try:
        import hqq  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs the `hqq` package"):
            LLM_BASELINES.build("hqq", bits=2, group_size=64)
    else:
        pytest.skip("hqq is installed")


def test_an_outside_baseline_is_applied_by_name() -> None:
    class Halve:
        def __init__(self, bits: int, group_size: int = 128) -> None:
            self.bits = bits

        def __call__(self, w: torch.Tensor) -> BaselineOutput:
            return BaselineOutput(weight=w / 2, bits=float(self.bits * w.numel()),
                                  extra={"bits_other": 1.0 * w.numel()})

    LLM_BASELINES.add("test_halve", Halve)
    try:
        assert EvalSettings(baselines=["test_halve"]).baselines == {"test_halve": {}}
        lin = {"a": nn.Linear(4, 3, bias=False), "b": nn.Linear(4, 2, bias=False)}
        before = {k: m.weight.detach().clone() for k, m in lin.items()}
        info = apply_baseline(lin, LLM_BASELINES.build("test_halve", bits=3), before)
        assert info["bits_per_weight"] == 3.0 and info["bits_per_weight_other"] == 1.0
        for k, m in lin.items():
            assert torch.equal(m.weight, before[k] / 2)
    finally:
        LLM_BASELINES._entries.pop("test_halve")
        LLM_BASELINES._info.pop("test_halve")

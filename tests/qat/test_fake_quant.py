"""Fake quantization of Linear / Conv2d weights and inputs, and the QAT callback through run()."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from llvq.modules.classifier import DigitsNet
from llvq.qat import (
    attach_fake_quant,
    calibrate,
    detach_fake_quant,
    fake_quant_layers,
    hadamard,
)
from llvq.qat.fake_quant import quantization_metrics

INT4 = {"name": "statqat_int", "bits": 4, "fit": "mse", "dynamic": True}
FP4 = {"name": "statqat_fp", "format": "e2m1", "fit": "mse", "dynamic": True}


def _net(seed: int = 0) -> DigitsNet:
    torch.manual_seed(seed)
    return DigitsNet()


def _x(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_hadamard_is_orthogonal_and_needs_a_power_of_two() -> None:
    h = hadamard(16)
    torch.testing.assert_close(h @ h.T, torch.eye(16))
    with pytest.raises(ValueError, match="power"):
        hadamard(12)


@pytest.mark.parametrize("spec, levels", [(INT4, 15), (FP4, 15)])
def test_weights_are_read_on_the_grid(spec, levels) -> None:
    net = _net()
    names = attach_fake_quant(net, weight=spec)
    assert names == ["0", "2", "5", "7"]
    for layer in fake_quant_layers(net).values():
        w = layer.weight  # read through the parametrization
        assert torch.unique(w).numel() <= levels
        scale = layer.parametrizations.weight[0].quantizer.scale
        grid = layer.parametrizations.weight[0].quantizer.levels * scale
        assert torch.isin(w.detach(), grid).all()
        assert not torch.equal(w, layer.parametrizations.weight.original)


def test_gradients_reach_the_full_precision_weights_straight_through() -> None:
    net = _net()
    attach_fake_quant(net, weight=INT4, activation={"name": "statqat_int", "bits": 4})
    net(_x()).sum().backward()
    for layer in fake_quant_layers(net).values():
        g = layer.parametrizations.weight.original.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_inputs_are_quantized_and_metrics_reported() -> None:
    net = _net()
    attach_fake_quant(net, activation={"name": "statqat_int", "bits": 2, "fit": "minmax"})
    seen = {}
    net[7].register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    net(_x())
    assert torch.unique(seen["x"]).numel() <= 3  # INT2: -1, 0, 1 times the scale
    metrics = quantization_metrics(net)
    assert {"input/mse", "input/mse_expected", "input/scale"} <= set(metrics)
    assert not any(k.startswith("weight/") for k in metrics)


def test_hadamard_without_quantization_changes_nothing() -> None:
    """``Q(x H) Q(W H)^T`` with Q the identity is ``x W^T``: the rotation is exact."""
    net, ref = _net(), _net()
    ident = {"name": "identity"}
    attach_fake_quant(net, weight=ident, activation=ident, hadamard_transform=True,
                      exclude=["0"])  # the first conv has 1 input channel (a power of two too)
    torch.testing.assert_close(net(_x()), ref(_x()), atol=1e-5, rtol=1e-5)


def test_hadamard_spreads_an_outlier_before_the_scale_is_chosen() -> None:
    lin = nn.Linear(64, 8, bias=False)
    with torch.no_grad():
        lin.weight.normal_(generator=torch.Generator().manual_seed(0))
        lin.weight[:, 5] *= 30.0  # one outlier input channel
    ref = lin.weight.detach().clone()
    errs = {}
    for rot in (False, True):
        probe = nn.Linear(64, 8, bias=False)
        with torch.no_grad():
            probe.weight.copy_(ref)
        attach_fake_quant(probe, weight=INT4, hadamard_transform=rot)
        errs[rot] = float((probe.weight.detach() - ref).pow(2).mean())
    assert errs[True] < errs[False] / 2


def test_detach_bakes_the_quantized_weights() -> None:
    net = _net()
    attach_fake_quant(net, weight=INT4, activation=INT4)
    quantized = net[5].weight.detach().clone()
    out = net(_x())
    detach_fake_quant(net, bake=True)
    assert not fake_quant_layers(net)
    assert not parametrize.is_parametrized(net[5])
    torch.testing.assert_close(net[5].weight.detach(), quantized)
    assert not torch.allclose(net(_x()), out)  # the inputs are no longer quantized


def test_calibrate_sets_running_input_scales() -> None:
    net = _net()
    attach_fake_quant(net, activation={"name": "statqat_int", "bits": 4, "fit": "minmax",
                                       "momentum": 1.0})
    q = net[7].fake_quant_input.quantizer
    assert not bool(q.fitted)
    net.eval()
    calibrate(net, [_x(16)])
    assert bool(q.fitted) and not q.training and not net.training  # the mode is restored
    with torch.no_grad():
        h = nn.Sequential(*list(net)[:7])(_x(16))
    assert float(q.scale) == pytest.approx(float(h.abs().max()) / 7, rel=1e-5)


def test_bad_requests_are_errors() -> None:
    with pytest.raises(ValueError, match="weight"):
        attach_fake_quant(_net())
    with pytest.raises(ValueError, match="no nn.Linear"):
        attach_fake_quant(_net(), weight=INT4, include=["nothing*"])
    net = _net()
    attach_fake_quant(net, weight=INT4)
    with pytest.raises(ValueError, match="already"):
        attach_fake_quant(net, weight=INT4)
    with pytest.raises(ValueError, match="power"):
        attach_fake_quant(nn.Linear(12, 3), weight=INT4, hadamard_transform=True)


def test_qat_digits_trains_with_fake_quantization(compose_cfg) -> None:
    from llvq.runner import run

    cfg = compose_cfg("experiment=qat_digits", "++trainer.fast_dev_run=2", "logger=csv",
                      "~callbacks.rich_progress_bar")
    metrics = run(cfg)
    assert {"qat/weight/mse", "qat/input/mse", "qat/weight/mse_expected"} <= set(metrics)
    assert metrics["qat/weight/mse"] > 0

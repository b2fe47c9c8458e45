"""StatQAT's INT-b and minifloat quantizers: the grids, the parameter rules and the error model."""

from __future__ import annotations

import pytest
import torch

from llvq.quantizers import build
from llvq.quantizers.statqat import (
    FP_FORMATS,
    fit_scale,
    fp_levels,
    gaussian_mse,
    gaussian_scale,
    int_levels,
)
from llvq.testing import check_quantizer


def _gauss(n: int, seed: int = 0, sigma: float = 1.0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)) * sigma


def test_fp4_e2m1_grid() -> None:
    pos = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert fp_levels("e2m1").tolist() == [-v for v in reversed(pos[1:])] + pos


@pytest.mark.parametrize("fmt, count, top", [
    ("e2m1", 15, 6.0), ("e3m2", 63, 28.0), ("e2m3", 63, 7.5),
    ("e4m3", 253, 448.0),      # OCP FP8 E4M3: no inf, one NaN pattern
    ("e5m2", 247, 57344.0),    # IEEE-style E5M2: top exponent for inf / NaN
])
def test_minifloat_grids_have_the_standard_range(fmt, count, top) -> None:
    lv = fp_levels(fmt)
    assert lv.numel() == count and float(lv.max()) == top == -float(lv.min())
    assert bool((lv[1:] > lv[:-1]).all())
    e, m, _ = FP_FORMATS[fmt]
    assert build("statqat_fp", dim=8, format=fmt).bits_per_vector == 8 * (1 + e + m)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_int_grid_is_symmetric(bits) -> None:
    lv = int_levels(bits)
    top = 2 ** (bits - 1) - 1
    assert lv.tolist() == list(range(-top, top + 1))
    q = build("statqat_int", dim=8, bits=bits)
    assert q.codebook_size == 2 ** bits - 1 and q.bits_per_vector == 8 * bits


@pytest.mark.parametrize("levels, step, mse", [
    # Max (1960), optimum uniform quantizers for N(0, 1): N levels, step, mean squared error
    (2, 1.596, 0.3634), (4, 0.9957, 0.1188), (8, 0.5860, 0.03744), (16, 0.3352, 0.01154)])
def test_analytic_rule_matches_max_1960(levels, step, mse) -> None:
    grid = torch.arange(levels, dtype=torch.float64) - (levels - 1) / 2  # mid-rise
    assert gaussian_scale(grid) == pytest.approx(step, rel=2e-3)
    assert gaussian_mse(grid, step) == pytest.approx(mse, rel=3e-3)


@pytest.mark.parametrize("grid", [int_levels(4), fp_levels("e2m1"), int_levels(3)])
def test_expected_error_matches_a_monte_carlo_estimate(grid) -> None:
    x = _gauss(400_000, 1, sigma=2.5)
    s = 0.4 * 2.5
    q = grid.float()[torch.bucketize(x / s, ((grid[1:] + grid[:-1]) / 2).float())] * s
    measured = float((q - x).pow(2).mean())
    assert gaussian_mse(grid, s, sigma=2.5) == pytest.approx(measured, rel=0.02)


@pytest.mark.parametrize("name, opts", [("statqat_int", {"bits": 4}),
                                        ("statqat_int", {"bits": 3}),
                                        ("statqat_fp", {"format": "e2m1"})])
def test_fits_on_gaussian_data_order_as_the_analysis_says(name, opts) -> None:
    """Min-max wastes levels on the tails; the MSE search, the analytic rule and the
    iterative rule reach about the same (lower) error; expected and measured agree."""
    x = _gauss(100_000, 2).view(-1, 100)
    mse = {}
    for fit in ("minmax", "mse", "analytic", "iterative"):
        out = build(name, dim=100, fit=fit, **opts).eval()(x)
        mse[fit] = float(out.metrics["mse"])
        assert float(out.metrics["mse_expected"]) == pytest.approx(mse[fit], rel=0.03)
    assert mse["analytic"] < 0.8 * mse["minmax"]
    assert mse["mse"] < 0.8 * mse["minmax"]
    assert mse["iterative"] <= mse["analytic"] * 1.005
    assert mse["analytic"] == pytest.approx(mse["mse"], rel=0.03)


def test_iterative_fit_adapts_to_non_gaussian_data() -> None:
    """On Laplace data the Gaussian closed form is off; the data-driven rules beat it."""
    u = torch.rand(50_000, generator=torch.Generator().manual_seed(3)) - 0.5
    x = -torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace(0, 1) by inversion
    lv = int_levels(4).float()

    def err(s: float) -> float:
        return float((lv[torch.bucketize(x / s, (lv[1:] + lv[:-1]) / 2)] * s - x).pow(2).mean())

    analytic, iterative, grid = (fit_scale(x, lv, f) for f in ("analytic", "iterative", "mse"))
    assert err(iterative) < err(analytic)
    assert err(grid) < err(analytic)


def test_scale_buffer_and_modes() -> None:
    q = build("statqat_int", dim=10, bits=4, fit="minmax", momentum=0.5)
    a, b = _gauss(100, 4).view(10, 10), _gauss(100, 5).view(10, 10) * 3
    q.train()
    q(a)
    first = float(q.scale)
    assert first == pytest.approx(float(a.abs().max()) / 7)  # the first fit is taken as is
    q(b)
    assert float(q.scale) == pytest.approx(0.5 * first + 0.5 * float(b.abs().max()) / 7)
    q.eval()
    frozen = float(q.scale)
    q(b * 10)
    assert float(q.scale) == frozen  # eval mode uses the buffer
    dyn = build("statqat_int", dim=10, bits=4, fit="minmax", dynamic=True).eval()
    dyn(a)
    dyn(b)
    assert float(dyn.scale) == pytest.approx(float(b.abs().max()) / 7)


@pytest.mark.parametrize("name, opts", [
    ("statqat_int", {"bits": 4, "fit": "analytic"}), ("statqat_int", {"bits": 8, "fit": "minmax"}),
    ("statqat_fp", {"format": "e4m3", "fit": "iterative"}),
    ("statqat_fp", {"format": "e5m2", "fit": "mse"}),
    ("statqat_int", {"bits": 4, "dynamic": True})])
def test_every_setting_keeps_the_contract(name, opts) -> None:
    check_quantizer(build(name, dim=16, **opts), empty_batch=True)


@pytest.mark.parametrize("name, opts, match", [
    ("statqat_int", {"bits": 1}, "bits"), ("statqat_int", {"fit": "best"}, "fit"),
    ("statqat_fp", {"format": "e9m9"}, "format"), ("statqat_int", {"momentum": 0}, "momentum")])
def test_bad_settings_are_named(name, opts, match) -> None:
    with pytest.raises(ValueError, match=match):
        build(name, dim=4, **opts)

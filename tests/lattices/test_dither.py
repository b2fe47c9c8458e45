"""Subtractive dither: uniform over the Voronoi cell, input-independent error, seeded."""

from __future__ import annotations

import pytest
import torch

from llvq.lattices import dithered_dequantize, dithered_quantize, get_lattice, sample_dither

G_REF = {"A2": 0.080188, "D4": 0.076603, "E8": 0.071682}


@pytest.mark.parametrize("name", sorted(G_REF))
def test_dither_error_is_white_with_the_cell_second_moment(name: str) -> None:
    lat = get_lattice(name)
    n = lat.dim
    num = 30_000
    g = torch.Generator().manual_seed(0)
    for x in (torch.zeros(num, n, dtype=torch.float64),
              torch.randn(num, n, generator=g, dtype=torch.float64) * 5):
        codes = dithered_quantize(x, lat, seed=11)
        err = dithered_dequantize(codes, lat, seed=11, dtype=torch.float64) - x
        var = G_REF[name] * lat.volume ** (2 / n)
        assert err.mean(0).abs().max() < 5 * (var / num) ** 0.5
        cov = err.T @ err / num
        assert torch.allclose(cov, var * torch.eye(n, dtype=torch.float64), atol=0.05 * var)
        if x.abs().sum() > 0:  # independent of the input: no correlation with x
            corr = (err * x).mean(0) / (var * 25) ** 0.5
            assert corr.abs().max() < 0.02


def test_dither_is_reproducible_from_the_seed() -> None:
    a = sample_dither("E8", (4, 3), seed=5)
    assert a.shape == (4, 3, 8)
    assert torch.equal(a, sample_dither("E8", (4, 3), seed=5))
    assert not torch.equal(a, sample_dither("E8", (4, 3), seed=6))
    # inside the Voronoi cell: the nearest lattice point of a dither sample is the origin
    assert torch.all(get_lattice("E8").closest_point(a).abs() < 1e-9)

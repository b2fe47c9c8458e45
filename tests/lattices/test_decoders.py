"""Fast (Conway–Sloane) and general exact decoders against brute force, dims 1-8."""

from __future__ import annotations

import pytest
import torch

from llvq.lattices import Lattice, closest_point, enumerate_points, get_lattice
from tests.lattices.brute import brute_min_distance

NAMES = ([f"Z{n}" for n in range(1, 9)] + [f"D{n}" for n in range(2, 9)]
         + [f"D{n}*" for n in range(2, 9)] + [f"D{n}+" for n in (2, 4, 6)]
         + [f"A{n}" for n in range(1, 9)] + [f"A{n}*" for n in range(1, 9)]
         + ["E6", "E6*", "E7", "E7*", "E8"])
FAST = [n for n in NAMES if get_lattice(n).fast_decoder is not None]
TOL = 1e-9


def _points(lat: Lattice, num: int, seed: int, spread: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num, lat.dim, generator=g, dtype=torch.float64) * spread


def _boundary_points(lat: Lattice, num: int, seed: int) -> torch.Tensor:
    """Points on Voronoi faces: midpoints of short vectors, moved along the face, plus an offset."""
    g = torch.Generator().manual_seed(seed)
    short = enumerate_points(lat, float(lat.generator.norm(dim=1).max()) * 1.01)
    short = short[short.norm(dim=1) > 1e-9]
    v = short[torch.randint(len(short), (num,), generator=g)]  # (N, n)
    w = torch.randn(num, lat.dim, generator=g, dtype=torch.float64) * 0.05
    w = w - (w * v).sum(1, keepdim=True) / (v * v).sum(1, keepdim=True) * v  # along the face
    offset = torch.randint(-3, 4, (num, lat.dim), generator=g).double() @ lat.generator
    return offset + v / 2 + w


def _check(lat: Lattice, x: torch.Tensor, y: torch.Tensor) -> None:
    assert y.shape == x.shape
    u = torch.linalg.solve(lat.generator.T, y.T).T  # coordinates
    assert torch.allclose(u, u.round(), atol=1e-6), "decoder returned a non-lattice point"
    d = (x - y).square().sum(-1)
    bd = brute_min_distance(lat, x)
    assert torch.all(d <= bd + TOL * (1 + bd)), f"{lat.name}: worse than brute force by " \
        f"{float((d - bd).max()):.3g}"


@pytest.mark.parametrize("name", FAST)
def test_fast_decoder_matches_brute_force(name: str) -> None:
    lat = get_lattice(name)
    for x in (_points(lat, 1500, 0), _boundary_points(lat, 300, 1)):
        _check(lat, x, lat.closest_point(x))


@pytest.mark.parametrize("name", NAMES)
def test_exact_decoder_matches_brute_force(name: str) -> None:
    lat = get_lattice(name)
    for x in (_points(lat, 1000, 2), _boundary_points(lat, 300, 3)):
        _check(lat, x, closest_point(lat.generator, x, "exact"))


@pytest.mark.parametrize("name", ["Z3", "D5", "D6+", "A4", "A3*", "E7", "E8"])
@pytest.mark.parametrize("method", [None, "exact"])
def test_far_from_origin(name: str, method: str | None) -> None:
    lat = get_lattice(name)
    x = _points(lat, 500, 4, spread=1.0) + 1e4 * _points(lat, 1, 5, spread=1.0)
    _check(lat, x, lat.closest_point(x, method))


def test_batched_shapes_and_dtype() -> None:
    lat = get_lattice("E8")
    x = torch.randn(3, 5, 8)
    for method in (None, "exact", "nearest_plane", "babai"):
        y = lat.closest_point(x, method)
        assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(lat.closest_point(x), lat.closest_point(x, "exact"))


def test_babai_is_worse_than_nearest_plane_is_worse_than_exact() -> None:
    lat = get_lattice("E8")
    x = _points(lat, 4000, 6)
    err = {m: float((x - closest_point(lat.generator, x, m)).square().sum(-1).mean())
           for m in ("babai", "nearest_plane", "exact")}
    assert err["exact"] < err["nearest_plane"] < err["babai"]


@pytest.mark.parametrize("name", ["AE9", "Lambda16",
                                  pytest.param("Lambda24", marks=pytest.mark.slow)])
def test_exact_decoder_high_dimension(name: str) -> None:
    """No lattice point lies strictly inside the ball through the decoded point."""
    lat = get_lattice(name)
    x = _points(lat, 12, 7, spread=1.0)
    y = closest_point(lat.generator, x, "exact")
    d = (x - y).norm(dim=-1)
    assert torch.all(d <= (x - closest_point(lat.generator, x, "nearest_plane")).norm(dim=-1))
    for xi, di in zip(x, d):
        assert enumerate_points(lat, float(di) * (1 - 1e-9), center=xi).shape[0] == 0

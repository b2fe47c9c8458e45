"""Generators: volumes, kissing numbers, duals, LLL, and errors for bad names or matrices."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from llvq.lattices import BEST_KNOWN, Lattice, count_points, get_lattice, lll
from llvq.lattices.generators import golay_code

# (name, volume |det G|, minimal norm, kissing number) from SPLAG Table 1.2 / ch. 4
KNOWN = [("Z4", 1.0, 1.0, 8), ("A2", math.sqrt(3), 2.0, 6), ("A3", 2.0, 2.0, 12),
         ("A3*", 0.5, 0.75, 8), ("D4", 2.0, 2.0, 24), ("D5", 2.0, 2.0, 40),
         ("E6", math.sqrt(3), 2.0, 72), ("E7", math.sqrt(2), 2.0, 126), ("E8", 1.0, 2.0, 240),
         ("E7*", 1 / math.sqrt(2), 1.5, 56), ("Lambda16", 16.0, 4.0, 4320)]


@pytest.mark.parametrize(("name", "volume", "norm", "kissing"), KNOWN)
def test_volume_and_kissing_number(name: str, volume: float, norm: float, kissing: int) -> None:
    lat = get_lattice(name)
    assert lat.volume == pytest.approx(volume, rel=1e-9)
    pts = count_points(lat, math.sqrt(norm) * (1 + 1e-9))
    assert pts == kissing + 1
    assert count_points(lat, math.sqrt(norm) * (1 - 1e-6)) == 1


def test_leech_volume_and_golay_code() -> None:
    assert get_lattice("Lambda24").volume == pytest.approx(1.0, rel=1e-9)
    code = golay_code()
    weights = {int((np.array(bits) @ code % 2).sum())
               for bits in itertools.product([0, 1], repeat=12)}
    assert weights == {0, 8, 12, 16, 24}


@pytest.mark.parametrize("dim", list(range(1, 25)))
def test_best_known_table_has_every_dimension(dim: int) -> None:
    lat = get_lattice(BEST_KNOWN[dim])
    assert lat.dim == dim and lat.generator.shape == (dim, dim)


@pytest.mark.parametrize("name", ["A5", "D6", "E6", "A11^3"])
def test_dual_is_inverse_transpose(name: str) -> None:
    lat = get_lattice(name)
    dual = get_lattice(name + "*")
    assert torch.allclose(lat.generator @ dual.generator.T, torch.eye(lat.dim, dtype=torch.float64)
                          ) or abs(dual.volume * lat.volume - 1) < 1e-9


def test_lll_is_unimodular_and_shortens() -> None:
    g = torch.Generator().manual_seed(0)
    eye = torch.eye(6, dtype=torch.float64)
    upper = eye + torch.randint(-3, 4, (6, 6), generator=g).double().triu(1)
    lower = eye + torch.randint(-3, 4, (6, 6), generator=g).double().tril(-1)
    u = upper @ lower  # unimodular: a skewed basis of the same lattice
    basis = (u @ get_lattice("E6").generator).numpy()
    red, t = lll(basis)
    assert abs(round(np.linalg.det(t.astype(float)))) == 1
    assert np.allclose(red, t @ basis)
    assert np.linalg.norm(red, axis=1).max() <= np.linalg.norm(basis, axis=1).max() + 1e-9


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown lattice 'F9'.*E8"):
        get_lattice("F9")


def test_odd_dn_plus_is_rejected() -> None:
    with pytest.raises(ValueError, match="even"):
        get_lattice("D5+")


@pytest.mark.parametrize("g", [torch.ones(3, 3), torch.ones(2, 3), torch.eye(2) * float("nan")])
def test_bad_generator_is_rejected(g: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="generator"):
        Lattice("bad", g)

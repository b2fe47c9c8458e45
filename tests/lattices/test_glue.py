"""Glue search (llvq.lattices.glue): coset tables, the code search, the glued lattices it builds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llvq.lattices import enumerate_points, get_lattice, nsm
from llvq.lattices.design import (
    GLUE_PARTS,
    LatticeParametrization,
    auto_parts,
    check_design,
    default_parts,
    design_lattice,
)
from llvq.lattices.glue import _glued_coefficients, coset_norms, glue_search, min_norm


def _kissing(g: torch.Tensor) -> int:
    m = min_norm(g)
    pts = enumerate_points(g, math.sqrt(m) * (1 + 1e-6))
    return int(((pts ** 2).sum(1) > 0.5 * m).sum())


def test_min_norm_and_coset_norms() -> None:
    assert min_norm(get_lattice("E8").generator) == pytest.approx(2.0)
    assert min_norm(get_lattice("Lambda16").generator) == pytest.approx(4.0)
    # Z^2: the cosets of (1/2)Z^2 / Z^2 are 0, (1/2, 0), (0, 1/2), (1/2, 1/2)
    np.testing.assert_allclose(coset_norms(torch.eye(2, dtype=torch.float64)), [0, .25, .25, .5])
    # E8 scaled to minimum norm 1: half a root (1/4), half a norm-4 vector (1/2), nothing else
    t = coset_norms(get_lattice("E8").generator / math.sqrt(2))
    assert sorted(set(np.round(t, 9))) == [0, 0.25, 0.5]
    assert np.count_nonzero(np.isclose(t, 0.25)) == 120  # 240 roots, in pairs ±r


def test_glued_basis_has_index_two_to_the_k() -> None:
    coef = _glued_coefficients([0b1111, 0b0011], 4)  # Z^4 + C/2, C = <1111, 1100> (bit j = c_j)
    assert abs(np.linalg.det(coef)) == pytest.approx(0.25)
    halves = (np.round(2 * coef) % 2).astype(int)
    span = {tuple((a * halves[i] + b * halves[j]) % 2) for i in range(4) for j in range(4)
            for a in (0, 1) for b in (0, 1)}
    assert span == {(0, 0, 0, 0), (1, 1, 1, 1), (1, 1, 0, 0), (0, 0, 1, 1)}


def test_z4_glues_to_d4_star() -> None:
    # Z^4 + (1/2, 1/2, 1/2, 1/2): the only glue that keeps the minimum norm; similar to D4
    r = glue_search([get_lattice("Z2"), get_lattice("Z2")], trials=2)
    assert r.index_bits == 1 and r.code == [0b1111]
    assert _kissing(r.generator) == 24
    assert abs(float(torch.linalg.det(r.generator))) == pytest.approx(1.0)
    g, se = nsm(r.generator, 40_000, seed=1)
    assert abs(g - 0.076603) < 4 * se + 1e-4


def test_d4_d4_glues_to_e8() -> None:
    r = glue_search([get_lattice("D4"), get_lattice("D4")], trials=4, seed=3)
    assert r.index_bits == 2  # det(D4 + D4) = 16 at minimum norm 2, det(E8) = 1
    assert _kissing(r.generator) == 240
    g, se = nsm(r.generator, 40_000, seed=2)
    assert abs(g - 0.071682) < 4 * se + 1e-4


def test_e8_e8_glues_to_lambda16() -> None:
    r = glue_search([get_lattice("E8"), get_lattice("E8")], trials=2)
    assert r.index_bits == 4 and _kissing(r.generator) == 4320  # Barnes–Wall Λ16
    g, se = nsm(r.generator, 20_000, seed=6)
    assert abs(g - 0.068298) < 4 * se + 2e-5


def test_lambda16_a2_glues_to_lambda18() -> None:
    r = glue_search([get_lattice("Lambda16"), get_lattice("A2")], trials=2)
    assert r.index_bits == 2 and _kissing(r.generator) == 7398  # the laminated lattice Λ18
    g, se = nsm(r.generator, 20_000, seed=4)
    assert abs(g - 0.067936) < 4 * se + 2e-5


@pytest.mark.slow
def test_lambda16_e6_glues_to_lambda22() -> None:
    r = glue_search([get_lattice("Lambda16"), get_lattice("E6")], trials=2)
    assert r.index_bits == 6 and _kissing(r.generator) == 49896
    g, se = nsm(r.generator, 50_000, seed=5)
    assert abs(g - 0.066656) < 4 * se + 2e-5


def test_no_glue_leaves_the_sum() -> None:
    r = glue_search([get_lattice("Z1"), get_lattice("Z1")], trials=1)
    assert r.index_bits == 0 and r.code == []
    g, se = nsm(r.generator, 20_000, seed=0)
    assert abs(g - 1 / 12) < 4 * se


def test_default_parts() -> None:
    assert default_parts(16, glue=True) == ["E8", "E8"]
    assert default_parts(22, glue=True) == ["Lambda16", "E6"]
    assert default_parts(22) == list(auto_parts(22))  # no glue: the best splice pair
    assert default_parts(13, glue=True) == list(auto_parts(13))  # no glue default below 16
    assert all(sum(get_lattice(p).dim for p in parts) == n for n, parts in GLUE_PARTS.items())


def test_search_is_seeded() -> None:
    a = glue_search([get_lattice("D4"), get_lattice("D4")], trials=2, seed=7)
    b = glue_search([get_lattice("D4"), get_lattice("D4")], trials=2, seed=7)
    assert a.code == b.code and torch.equal(a.generator, b.generator)


def test_parametrization_starts_from_the_glued_lattice() -> None:
    p = LatticeParametrization(8, "householder", parts=["D4", "D4"], glue=True, seed=1)
    assert p.glue_index_bits == 2
    assert _kissing(p.base) == 240
    assert torch.allclose(p().detach(), p.base, atol=0.05)  # a fusion starts next to its base
    free = LatticeParametrization(8, "free", parts=["D4", "D4"], init="splice", glue=True)
    assert _kissing(free().detach()) == 240
    r = design_lattice(8, "splice", parts=["D4", "D4"], glue=True, eval_samples=20_000)
    assert abs(r.nsm - 0.071682) < 4 * r.se + 1e-4


@pytest.mark.parametrize("call, match", [
    (lambda: glue_search([get_lattice("E8")]), "two or more parts"),
    (lambda: glue_search([get_lattice("Lambda16"), get_lattice("Lambda16")]), "n <= 24"),
    (lambda: glue_search([get_lattice("D4"), get_lattice("D4")], trials=0), "lattice.glue_trials"),
    (lambda: check_design(8, "free", ["D4", "D4"], glue=True), "lattice.glue"),
    (lambda: check_design(1, "splice", None, glue=True), "lattice.glue"),
])
def test_bad_glue_settings(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()

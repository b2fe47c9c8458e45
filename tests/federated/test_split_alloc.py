"""Dirichlet / IID splits and FPLD rate allocation."""

from __future__ import annotations

import math

import pytest
import torch

from llvq.federated import allocate_rates, dirichlet_split, fpld_allocation, iid_split


def _labels() -> torch.Tensor:
    return torch.arange(2000) % 10


@pytest.mark.parametrize("split", [lambda y: dirichlet_split(y, 10, 0.5, seed=1),
                                   lambda y: iid_split(len(y), 10, seed=1)])
def test_split_is_a_partition(split) -> None:
    y = _labels()
    parts = split(y)
    assert len(parts) == 10
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(len(y)))


def test_small_alpha_is_more_skewed_and_seeded() -> None:
    y = _labels()

    def skew(alpha: float) -> float:
        parts = dirichlet_split(y, 10, alpha, seed=0)
        return sum(float(torch.bincount(y[p], minlength=10).max()) / len(p) for p in parts) / len(parts)

    assert skew(0.1) > 0.6 > skew(100.0)
    assert all(torch.equal(a, b) for a, b in zip(dirichlet_split(y, 10, 0.1, 3), dirichlet_split(y, 10, 0.1, 3),
                                                 strict=True))
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_split(y, 10, 0.0)


def test_fpld_allocation_is_the_log_tilted_rule() -> None:
    w = [1.0, 2.0, 4.0]
    bits = fpld_allocation(3000.0, w, vector_len=100)
    gmean = math.prod(w) ** (1 / 3)
    expected = [1000 + 50 * math.log2(wi / gmean) for wi in w]
    assert bits == pytest.approx(expected, rel=1e-9)
    assert fpld_allocation(300.0, [1.0, 1.0, 1e6], 100)[:2] == [0.0, 0.0]  # water-filling clips
    assert allocate_rates(2.0, w, 100, 2) == [2.0, 2.0, 2.0]
    rates = allocate_rates(2.0, w, 100, 2, "fpld")
    assert rates == sorted(rates) and sum(r * 100 for r in rates) <= 2.0 * 100 * 3
    assert all(abs(r * 2 - round(r * 2)) < 1e-12 for r in rates)

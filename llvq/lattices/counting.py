"""Counting lattice points in a ball: exact enumeration, the volume estimate, overload.

A bounded lattice code keeps the points of ``L`` inside a ball of radius ``r``; its size
sets the rate ``log2(count) / n`` bits per dimension. Exact enumeration is Fincke & Pohst
(Math. Comp. 44, 1985) on the LLL-reduced, QR-factored basis; for large counts the Gauss
estimate ``vol(B_n) r^n / V`` is accurate to ``O(r^(n-1))`` (Conway & Sloane, SPLAG ch. 3).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from llvq.lattices.lattice import Lattice
from llvq.lattices.registry import as_lattice
from llvq.lattices.sphere import prepare

__all__ = [
    "ball_volume",
    "count_points",
    "enumerate_points",
    "estimate_count",
    "overload_probability",
]


def enumerate_points(lattice: Lattice | Tensor | str, radius: float,
                     center: Tensor | None = None, max_points: int = 2_000_000) -> Tensor:
    """All lattice points ``y`` with ``||y - center|| <= radius`` (Fincke–Pohst).

    Args:
        lattice: a :class:`Lattice`, a generator (rows = basis) or a lattice name.
        radius: ball radius (same units as the generator).
        center: ``(n,)`` ball centre; the origin by default.
        max_points: raise instead of listing more points than this.

    Returns:
        ``(m, n)`` float64 lattice points (any order).
    """
    lat = as_lattice(lattice)
    basis = prepare(lat.generator)
    n = lat.dim
    ctr = torch.zeros(n, dtype=torch.float64) if center is None else center.double().cpu()
    base = torch.floor(ctr @ basis.reduced_inv + 0.5)
    z = (((ctr - base @ basis.reduced) @ basis.rotation) / basis.diag).numpy()
    up = basis.upper.numpy()
    d2 = (basis.diag ** 2).numpy()
    r2 = float(radius) ** 2 * (1 + 1e-12) + 1e-12
    found: list[np.ndarray] = []
    u = np.zeros(n)
    total = 0

    def rec(k: int, partial: float) -> None:
        nonlocal total
        c = z[k] - up[k] @ u
        half = math.sqrt(max(r2 - partial, 0.0) / d2[k])
        lo, hi = math.ceil(c - half), math.floor(c + half)
        if k == 0:
            if hi >= lo:
                block = np.repeat(u[None], hi - lo + 1, axis=0)
                block[:, 0] = np.arange(lo, hi + 1)
                found.append(block)
                total += hi - lo + 1
                if total > max_points:
                    raise ValueError(f"more than max_points={max_points} lattice points within "
                                     f"radius {radius}; use estimate_count or raise max_points")
            return
        for v in range(lo, hi + 1):
            u[k] = v
            rec(k - 1, partial + d2[k] * (c - v) ** 2)
        u[k] = 0.0

    rec(n - 1, 0.0)
    if not found:
        return torch.zeros(0, n, dtype=torch.float64)
    coords = (torch.from_numpy(np.concatenate(found)) + base) @ basis.transform
    return coords @ lat.generator


def count_points(lattice: Lattice | Tensor | str, radius: float,
                 max_points: int = 2_000_000) -> int:
    """Exact number of lattice points within ``radius`` of the origin (closed ball)."""
    return int(enumerate_points(lattice, radius, max_points=max_points).shape[0])


def ball_volume(n: int, radius: float = 1.0) -> float:
    """Volume of the n-ball, ``pi^(n/2) r^n / Gamma(n/2 + 1)``."""
    return math.exp(n / 2 * math.log(math.pi) + n * math.log(radius) - math.lgamma(n / 2 + 1))


def estimate_count(lattice: Lattice | Tensor | str, radius: float) -> float:
    """Gauss volume estimate of the number of points within ``radius``: ``vol(B_n(r)) / V``."""
    lat = as_lattice(lattice)
    return ball_volume(lat.dim, radius) / lat.volume


def overload_probability(lattice: Lattice | Tensor | str, x: Tensor, radius: float,
                         scale: float = 1.0, method: str | None = None) -> float:
    """Fraction of vectors whose quantized point falls outside the code's ball.

    The code is ``scale * {y in L : ||y|| <= radius}``; a block ``x: (..., n)`` overloads
    when ``||Q_L(x / scale)|| > radius``.

    Args:
        lattice: a :class:`Lattice`, a generator or a lattice name.
        x: ``(..., n)`` data.
        radius: ball radius in units of the unscaled lattice.
        scale: lattice scale.
        method: closest-point method (default: the lattice's fast one, else exact).
    """
    lat = as_lattice(lattice)
    y = lat.closest_point(x.double() / scale, method)
    return float((y.norm(dim=-1) > radius * (1 + 1e-12)).double().mean())

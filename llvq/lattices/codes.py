"""Finite lattice codes: the ``K`` points of a lattice nearest to a well-chosen centre.

A bounded lattice quantizer sends each block as a fixed-length index into such a code
(:class:`llvq.quantizers.BoundedLatticeQuantizer`). The centre is searched among the points
``f @ G`` with ``f in {0, 1/3, 1/2, 2/3}^n`` for ``n <= 3`` (deep holes and edge midpoints
included; a few of them above) so that the code is as round as possible: for ``Z`` it is the mid-rise quantizer (centre ``1/2``); for
``A2`` at 16 points the code is centred on a deep hole.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from llvq.lattices.counting import enumerate_points
from llvq.lattices.lattice import Lattice

__all__ = ["CodeIndex", "bounded_code"]

_CODE_CACHE: dict[tuple[bytes, int], tuple[Tensor, Tensor]] = {}
_CACHE_SIZE = 256


def _candidate_fractions(n: int) -> Tensor:
    """Centre candidates ``f`` (rows): the full grid ``{0, 1/3, 1/2, 2/3}^n`` up to n = 3, else
    the origin, ``1/3``, ``1/2`` and ``2/3`` of the all-ones vector and half of each basis vector."""
    fracs = torch.tensor([0.0, 1 / 3, 0.5, 2 / 3], dtype=torch.float64)
    if n <= 3:
        return torch.cartesian_prod(*([fracs] * n)).view(-1, n)
    ones = torch.ones(n, dtype=torch.float64)
    return torch.cat([fracs[:, None] * ones, 0.5 * torch.eye(n, dtype=torch.float64)])


class CodeIndex:
    """Maps integer lattice coordinates ``(..., n)`` to their index in a code, ``-1`` when not in it.

    Each row is keyed by its mixed-radix position in the code's bounding box grown by one on
    every side (rows outside are clamped onto that border, where no code point lies); the
    sorted keys of the code are searched.
    """

    def __init__(self, coords: Tensor) -> None:
        self.low, self.high = coords.min(0).values - 1, coords.max(0).values + 1
        span = self.high - self.low + 1
        self.strides = torch.cumprod(torch.cat([span.new_ones(1), span[:-1]]), 0)
        self.keys, self.order = torch.sort(self._key(coords))

    def _key(self, u: Tensor) -> Tensor:
        low, high, strides = (t.to(u.device) for t in (self.low, self.high, self.strides))
        return ((torch.minimum(torch.maximum(u, low), high) - low) * strides).sum(-1)

    def __call__(self, u: Tensor) -> Tensor:
        keys, order = self.keys.to(u.device), self.order.to(u.device)
        k = self._key(u)
        pos = torch.searchsorted(keys, k).clamp_max(keys.numel() - 1)
        return torch.where(keys[pos] == k, order[pos], torch.full_like(k, -1))


def bounded_code(generator: Tensor, size: int, centre_frac: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The ``size`` lattice points nearest to the best centre: ``(coords (K, n) int64, centre (n,))``.

    Each candidate centre gives the code of its ``size`` nearest points (ties broken by
    distance rounded to 1e-9, then by coordinates). The winner is the code that overloads
    least for a fixed isotropic Gaussian sample around its centre (2,048 points of standard
    deviation ``r / 2.5``, ``r`` the radius of a ball of ``size`` cells), then the one with the
    smallest radius, then the smallest mean squared radius: the roundest code. Everything is
    deterministic in the bits of ``generator``, so two parties holding the same stored ``G``
    build the same code. Results are cached per generator.

    Args:
        generator: ``(n, n)`` generator, rows = basis.
        size: ``K`` >= 1 code points.
        centre_frac: use this centre, given in lattice coordinates (``(n,)``, e.g. ``(1/2, 1/2)``),
            instead of searching (not cached).
    """
    if size < 1:
        raise ValueError(f"a bounded code needs at least one point, got size={size}")
    g = generator.detach().double().cpu()
    key = (g.numpy().tobytes(), int(size))
    if centre_frac is None and key in _CODE_CACHE:
        return _CODE_CACHE[key]
    n = g.shape[0]
    inv = torch.linalg.inv(g)
    lat = Lattice("code", g)
    grid = _candidate_fractions(n) if centre_frac is None else \
        centre_frac.detach().double().cpu().view(1, n)
    vol = abs(float(torch.linalg.det(g)))
    r0 = (size * vol / (math.pi ** (n / 2) / math.gamma(n / 2 + 1))) ** (1 / n)
    probe = torch.randn(2048, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    probe = probe * (r0 / 2.5)
    codes = []
    for frac in grid:
        centre = frac @ g
        radius = r0
        while True:
            pts = enumerate_points(g, radius, center=centre)
            if pts.shape[0] >= size:
                break
            radius *= 1.3
        coords = torch.round(pts @ inv).to(torch.int64)
        dist = (pts - centre).norm(dim=-1)
        keys = [coords[:, j].numpy() for j in reversed(range(n))] + [np.round(dist.numpy(), 9)]
        order = torch.from_numpy(np.lexsort(keys)[:size])  # by distance, then coordinates
        codes.append((coords[order], centre, dist[order]))
    if centre_frac is not None:
        return codes[0][0], codes[0][1]
    # one decoding of the probe around every candidate centre
    near = lat.closest_coordinates((probe[None] + torch.stack([c for _, c, _ in codes])[:, None]).view(-1, n))
    near = near.view(len(codes), probe.shape[0], n)
    best: tuple[tuple[float, float, float], Tensor, Tensor] | None = None
    for (chosen, centre, dist), hits in zip(codes, near, strict=True):
        inside = CodeIndex(chosen)(hits) >= 0
        score = (round(1.0 - float(inside.double().mean()), 9), round(float(dist[-1]), 9),
                 float(dist.pow(2).mean()))
        if best is None or score < best[0]:
            best = (score, chosen, centre)
    _CODE_CACHE[key] = (best[1], best[2])
    if len(_CODE_CACHE) > _CACHE_SIZE:
        _CODE_CACHE.pop(next(iter(_CODE_CACHE)))
    return best[1], best[2]

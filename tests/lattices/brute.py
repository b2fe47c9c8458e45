"""Brute-force nearest-point distances for the decoder tests (complete, not fast).

For each ``x`` the nearest-plane point ``p`` is within ``r = ||x - p||`` of ``x``, so the
nearest point lies in the ball of radius ``2 r`` around ``p``; listing every lattice point of
that ball (centred at the origin after translating by ``p``) and taking the minimum distance
is exhaustive.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llvq.lattices import Lattice, closest_point, enumerate_points


def brute_min_distance(lat: Lattice, x: Tensor, chunk: int = 256) -> Tensor:
    """Squared distance from each ``x: (N, n)`` (float64) to its nearest lattice point."""
    p = closest_point(lat.generator, x, "nearest_plane")
    xr = x - p  # (N, n) translate: the lattice is invariant under p
    order = xr.norm(dim=-1).argsort()  # similar radii share a chunk and a candidate list
    out = torch.empty(x.shape[0], dtype=x.dtype)
    for s in range(0, x.shape[0], chunk):
        idx = order[s: s + chunk]
        r = float(xr[idx].norm(dim=-1).max()) * 2 + 1e-9
        cand = enumerate_points(lat, r)  # (M, n) every point of the ball
        out[idx] = torch.cdist(xr[idx], cand).square().min(-1).values
    return out

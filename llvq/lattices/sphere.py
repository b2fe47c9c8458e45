"""Closest-point search for any generator: exact sphere decoding, Babai approximations.

Notation: rows of ``G`` (``n x n``) are the basis, lattice points are ``u @ G``. The basis is
LLL-reduced (``B = T @ G``) and factored ``B.T = Q R`` with ``R`` upper triangular and a
positive diagonal, so for ``z = x @ Q`` the distance is ``||z - u @ R.T||^2`` and the
coordinate ``u_k`` only meets ``u_j, j >= k`` (Agrell, Eriksson, Vardy & Zeger, "Closest
point search in lattices", IEEE T-IT 48(8), 2002, eq. 11-13).

* ``exact``: the Schnorr–Euchner depth-first search (Agrell et al. 2002, Alg. DECODE)
  run for all points in lockstep: every point carries its own level, coordinates, zig-zag
  step and best distance, and one loop iteration advances every unfinished point by one
  node with tensor ops; finished points are compacted away.
* ``nearest_plane``: Babai's nearest-plane (the first leaf of that search).
* ``babai``: Babai's rounding ``round(x @ B^-1) @ B``.

Search is done in float64 on the input's device. For ``exact`` on CPU tensors the search runs
in the compiled kernel of :mod:`llvq.lattices._ckernel` (same algorithm, one point at a time,
100–300 times faster in dimensions 12–24; rows split over ``torch.get_num_threads()``
threads); the lockstep torch search is the fallback (GPU tensors, no C compiler,
``LLVQ_NO_CKERNEL=1``).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor

from llvq.lattices import _ckernel
from llvq.lattices.reduction import lll

__all__ = [
    "METHODS",
    "PreparedBasis",
    "check_generator",
    "closest_coordinates",
    "closest_point",
    "prepare",
]

METHODS = ("exact", "babai", "nearest_plane")
_CACHE: OrderedDict[tuple, PreparedBasis] = OrderedDict()
_CACHE_SIZE = 64


def check_generator(generator: Tensor, what: str = "generator") -> Tensor:
    """Validate a generator: a finite, square, full-rank ``(n, n)`` matrix (rows = basis).

    Raises:
        ValueError: naming ``what`` if the matrix is not square, not finite or singular.
    """
    g = torch.as_tensor(generator)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] == 0:
        raise ValueError(f"`{what}` must be a square (n, n) matrix whose rows are the basis "
                         f"vectors, got shape {tuple(g.shape)}")
    if not bool(torch.isfinite(g).all()):
        raise ValueError(f"`{what}` has non-finite entries")
    g64 = g.detach().double().cpu()
    sv = torch.linalg.svdvals(g64)
    if float(sv.min()) <= 1e-10 * float(sv.max()):
        raise ValueError(f"`{what}` is singular (condition number "
                         f"{float(sv.max() / sv.min()) if sv.min() > 0 else float('inf'):.3g}); "
                         f"a lattice generator must have full rank")
    return g


class PreparedBasis:
    """An LLL-reduced, QR-factored generator, ready for closest-point search.

    Args:
        generator: ``(n, n)`` full-rank matrix, rows = basis.
    """

    def __init__(self, generator: Tensor) -> None:
        g = check_generator(generator).detach().double().cpu()
        self.n = g.shape[0]
        reduced, t = lll(g.numpy())
        q, r = np.linalg.qr(reduced.T)  # reduced.T = Q R
        s = np.sign(np.diag(r))
        s[s == 0] = 1.0
        q, r = q * s, r * s[:, None]
        self.generator = g
        self.reduced = torch.from_numpy(reduced)  # (n, n) B = T @ G
        self.reduced_inv = torch.linalg.inv(self.reduced)
        self.transform = torch.from_numpy(t.astype(np.float64))  # T, unimodular
        self.rotation = torch.from_numpy(q)  # Q
        self.diag = torch.from_numpy(np.diag(r).copy())  # R_kk > 0
        self.upper = torch.from_numpy(np.triu(r / np.diag(r)[:, None], 1))  # R_kj / R_kk, j > k
        self._device_cache: dict[torch.device, tuple[Tensor, ...]] = {}

    def tensors(self, device: torch.device) -> tuple[Tensor, ...]:
        """``(B, B^-1, T, Q, diag R, strict upper of R / diag)`` on ``device`` (cached)."""
        if device not in self._device_cache:
            self._device_cache[device] = tuple(
                t.to(device) for t in (self.reduced, self.reduced_inv, self.transform,
                                       self.rotation, self.diag, self.upper))
        return self._device_cache[device]

    def coordinates(self, x: Tensor, method: str = "exact", chunk: int = 1 << 15) -> Tensor:
        """Integer coordinates ``u`` (float64, w.r.t. the original generator) of the point."""
        if method not in METHODS:
            raise ValueError(f"unknown closest-point method '{method}'; choose one of {METHODS}")
        b, b_inv, t, q, diag, upper = self.tensors(x.device)
        flat = x.detach().reshape(-1, self.n).double()
        base = _round(flat @ b_inv)  # (N, n) Babai rounding in the reduced basis
        if method == "babai":
            return (base @ t).reshape(x.shape)
        z = ((flat - base @ b) @ q) / diag  # (N, n) rotated, scaled residual
        if method == "exact" and z.device.type == "cpu":
            fast = _ckernel.decode(z.numpy(), upper.numpy(), diag.square().numpy(),
                                   threads=torch.get_num_threads())
            if fast is not None:
                return ((torch.from_numpy(fast) + base) @ t).reshape(x.shape)
        out = torch.empty_like(z)
        for s in range(0, z.shape[0], chunk):
            zc = z[s: s + chunk]
            if method == "nearest_plane":
                out[s: s + chunk] = _nearest_plane(zc, upper)
            else:
                out[s: s + chunk] = _schnorr_euchner(zc, upper, diag)
        return ((out + base) @ t).reshape(x.shape)


def _nearest_plane(z: Tensor, upper: Tensor) -> Tensor:
    """Babai's nearest-plane coordinates for scaled rotated targets ``z`` ``(N, n)``."""
    u = torch.zeros_like(z)
    for k in range(z.shape[1] - 1, -1, -1):
        u[:, k] = _round(z[:, k] - u @ upper[k])
    return u


def _round(x: Tensor) -> Tensor:
    """Round half up; ``floor(x + 1/2)`` is several times faster than ``torch.round`` in float64."""
    return torch.floor(x + 0.5)


def _schnorr_euchner(z: Tensor, upper: Tensor, diag: Tensor) -> Tensor:
    """Exact lockstep Schnorr–Euchner search (Agrell et al. 2002, Alg. DECODE), batched.

    Args:
        z: ``(N, n)`` targets in rotated coordinates divided by ``diag``.
        upper: ``(n, n)`` strictly upper ``R_kj / R_kk``.
        diag: ``(n,)`` positive diagonal of ``R``.

    Returns:
        ``(N, n)`` float64 integer coordinates of the closest point.
    """
    num, n = z.shape
    dev = z.device
    d2 = diag.square()
    u = torch.zeros_like(z)
    c = torch.zeros_like(z)  # centres per level
    step = torch.zeros_like(z)
    dist = torch.zeros(num, n + 1, dtype=z.dtype, device=dev)  # dist[:, k]: levels >= k
    k = torch.full((num,), n - 1, dtype=torch.long, device=dev)
    c[:, n - 1] = z[:, n - 1]
    u[:, n - 1] = _round(z[:, n - 1])
    step[:, n - 1] = torch.where(c[:, n - 1] >= u[:, n - 1], 1.0, -1.0)
    best = torch.full((num,), float("inf"), dtype=z.dtype, device=dev)
    ubest = torch.zeros_like(z)
    out = torch.empty_like(z)
    idx = torch.arange(num, device=dev)  # original row of each live point
    it = 0
    while idx.numel():
        k1 = k[:, None]
        yk = c.gather(1, k1) - u.gather(1, k1)  # (N, 1)
        new = dist.gather(1, k1 + 1) + d2[k1] * yk.square()  # (N, 1)
        ok = new < best[:, None]
        desc = ok & (k1 > 0)
        leaf = (ok & (k1 == 0)).squeeze(1)
        best = torch.where(leaf, new.squeeze(1), best)
        ubest = torch.where(leaf[:, None], u, ubest)
        dist.scatter_(1, k1, torch.where(desc, new, dist.gather(1, k1)))
        kn = torch.where(desc, k1 - 1, k1 + 1)  # descend, or go up to the next sibling
        done = (kn >= n).squeeze(1)
        kn = kn.clamp_(max=n - 1)
        c_down = z.gather(1, kn) - (upper[kn.squeeze(1)] * u).sum(1, keepdim=True)
        u_down = _round(c_down)
        s_down = torch.where(c_down >= u_down, 1.0, -1.0)
        u_cur = u.gather(1, kn)
        s_cur = step.gather(1, kn)
        u.scatter_(1, kn, torch.where(desc, u_down, u_cur + s_cur))
        step.scatter_(1, kn, torch.where(desc, s_down, -s_cur - torch.sign(s_cur)))
        c.scatter_(1, kn, torch.where(desc, c_down, c.gather(1, kn)))
        k = kn.squeeze(1)
        it += 1
        if done.any() and (it % 8 == 0 or bool(done.all())):
            out[idx[done]] = ubest[done]
            keep = ~done
            idx, k, u, c, step, dist, best, ubest, z = (
                t[keep] for t in (idx, k, u, c, step, dist, best, ubest, z))
        else:
            # finished points idle until the next compaction: nothing beats a negative best,
            # so they keep leaving the top level and ``ubest`` stays untouched
            best = torch.where(done, -1.0, best)
    return out


def prepare(generator: Tensor) -> PreparedBasis:
    """The (cached) :class:`PreparedBasis` of a generator."""
    g = torch.as_tensor(generator).detach().double().cpu()
    key = (tuple(g.shape), g.numpy().tobytes())
    hit = _CACHE.get(key)
    if hit is None:
        hit = PreparedBasis(g)
        _CACHE[key] = hit
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return hit


def closest_coordinates(generator: Tensor, x: Tensor, method: str = "exact") -> Tensor:
    """Integer coordinates ``u`` (int64, ``(..., n)``) of the lattice point chosen for ``x``.

    Args:
        generator: ``(n, n)`` full-rank matrix, rows = basis.
        x: ``(..., n)`` points.
        method: ``"exact"`` (sphere decoding), ``"nearest_plane"`` or ``"babai"`` (rounding).
    """
    basis = prepare(generator)
    _check_points(x, basis.n)
    return basis.coordinates(x, method).long()


def closest_point(generator: Tensor, x: Tensor, method: str = "exact") -> Tensor:
    """The lattice point ``u @ G`` chosen for each ``x: (..., n)``, in ``x``'s dtype.

    Args:
        generator: ``(n, n)`` full-rank matrix, rows = basis.
        x: ``(..., n)`` points.
        method: ``"exact"`` (sphere decoding), ``"nearest_plane"`` or ``"babai"`` (rounding).
    """
    basis = prepare(generator)
    _check_points(x, basis.n)
    u = basis.coordinates(x, method)
    return (u @ basis.generator.to(x.device)).to(x.dtype)


def _check_points(x: Tensor, n: int) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim == 0 or x.shape[-1] != n:
        raise ValueError(f"points must be a float tensor of shape (..., {n}) for a lattice of "
                         f"dimension {n}, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")

"""Fast exact closest-point decoders of Conway & Sloane for Z^n, D_n, A_n and unions of cosets.

Conway & Sloane, "Fast quantizing and decoding algorithms for lattice quantizers and codes",
IEEE T-IT 28(2), 1982 (also SPLAG ch. 20): ``f(x)`` rounds every coordinate (Z^n);
``g(x)`` rounds and, if the coordinate sum is odd, re-rounds the worst coordinate the other
way (D_n); A_n rounds in the hyperplane ``sum = 0`` and fixes the sum by moving the
coordinates rounded furthest; a lattice that is a union of cosets ``L + t_i`` of a lattice
``L`` with a fast decoder is decoded coset by coset (D_n^+ hence E8, D_n^*, A_n^*).

Every decoder maps ``x: (..., n) -> (..., n)`` (the nearest lattice point), batched.

On CPU float32/float64 inputs without autograd, D_n and D_n^+ (hence E8) run a compiled C
kernel (:mod:`llvq.lattices._cfast`) that gives the same outputs as the torch code below;
``LLVQ_NO_CKERNEL=1`` (or no C compiler) keeps the torch path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from llvq.lattices import _cfast

__all__ = [
    "AnDecoder",
    "CosetDecoder",
    "Decoder",
    "decode_an_ambient",
    "decode_dn",
    "decode_zn",
    "helmert_basis",
]

Decoder = Callable[[Tensor], Tensor]


def decode_zn(x: Tensor) -> Tensor:
    """Nearest point of Z^n: coordinate-wise rounding (Conway & Sloane 1982, f(x))."""
    return torch.round(x)


def decode_dn(x: Tensor) -> Tensor:
    """Nearest point of D_n = {y in Z^n : sum(y) even} (Conway & Sloane 1982, g(x)).

    Ties (several coordinates with the same largest rounding error) re-round the first one.
    """
    if _cfast.usable(x):
        return _cfast.decode_dn(x)
    return _decode_dn_torch(x)


def _decode_dn_torch(x: Tensor) -> Tensor:
    f = torch.round(x)
    d = x - f
    # parity coordinate by coordinate: a float32 sum of large coordinates would round
    odd = torch.remainder(torch.remainder(f, 2).sum(-1, keepdim=True), 2) != 0  # (..., 1)
    k = d.abs().argmax(-1, keepdim=True)  # (..., 1) worst-rounded coordinate
    dk = d.gather(-1, k)
    step = torch.where(dk >= 0, 1.0, -1.0).to(x.dtype) * odd
    return f.scatter_add(-1, k, step)


def decode_an_ambient(x: Tensor) -> Tensor:
    """Nearest point of A_n = {y in Z^(n+1) : sum(y) = 0} to ``x`` in that hyperplane.

    Conway & Sloane (1982), Sec. III-B: round, then with ``D = sum(f)`` lower by one the
    ``D`` coordinates rounded up the most (``D > 0``) or raise the ``-D`` coordinates rounded
    down the most (``D < 0``).
    """
    f = torch.round(x)
    d = x - f
    m = x.shape[-1]
    delta = f.sum(-1, keepdim=True)  # (..., 1)
    order = d.argsort(-1)
    ranks = torch.empty_like(order).scatter_(
        -1, order, torch.arange(m, device=x.device).expand_as(order))
    down = (ranks < delta).to(x.dtype)  # smallest d first
    up = (ranks >= m + delta).to(x.dtype)  # largest d
    return f - down + up


def helmert_basis(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Orthonormal basis ``(n+1, n)`` (columns) of the hyperplane ``sum = 0`` in R^(n+1).

    Column ``k`` is ``(1, ..., 1, -(k+1), 0, ...) / sqrt((k+1)(k+2))`` (Helmert's contrasts).
    """
    q = torch.zeros(n + 1, n, dtype=dtype)
    for k in range(n):
        q[: k + 1, k] = 1.0
        q[k + 1, k] = -(k + 1.0)
        q[:, k] /= ((k + 1.0) * (k + 2.0)) ** 0.5
    return q


class AnDecoder:
    """Exact A_n decoder for points given in the n-dimensional Helmert coordinates.

    Lifts ``x`` to the hyperplane of R^(n+1), runs :func:`decode_an_ambient`, maps back;
    both maps are isometries, so the nearest point is preserved.

    Args:
        n: lattice dimension.
    """

    def __init__(self, n: int) -> None:
        self.basis = helmert_basis(n)  # (n+1, n)

    def __call__(self, x: Tensor) -> Tensor:
        q = self.basis.to(device=x.device, dtype=x.dtype)
        return decode_an_ambient(x @ q.T) @ q


class CosetDecoder:
    """Exact decoder of a union of cosets ``L + t_i`` given an exact decoder of ``L``.

    Conway & Sloane (1982), Sec. II: decode ``x - t_i`` in ``L`` for every glue vector and
    keep the nearest ``y + t_i``.

    Args:
        base: exact decoder of the sublattice ``L``.
        glue: ``(m, n)`` coset representatives (include the zero vector).
    """

    def __init__(self, base: Decoder, glue: Tensor) -> None:
        self.base = base
        self.glue = glue
        n = glue.shape[-1]
        half = torch.stack([torch.zeros(n), torch.full((n,), 0.5)]).to(glue.dtype)
        # D_n^+ (E8 for n = 8) has a compiled decoder doing exactly what __call__ does
        self._dn_plus = (base is decode_dn and glue.shape == half.shape
                         and bool(torch.equal(glue.cpu(), half)))

    def __call__(self, x: Tensor) -> Tensor:
        if getattr(self, "_dn_plus", False) and _cfast.usable(x):  # (older pickles lack it)
            return _cfast.decode_dn_plus(x)
        glue = self.glue.to(device=x.device, dtype=x.dtype)
        best = x.new_empty(x.shape)
        best_d = None
        for t in glue:
            y = self.base(x - t) + t
            d = (x - y).square().sum(-1, keepdim=True)
            if best_d is None:
                best, best_d = y, d
            else:
                closer = d < best_d
                best = torch.where(closer, y, best)
                best_d = torch.where(closer, d, best_d)
        return best

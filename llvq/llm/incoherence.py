"""Incoherence processing: random orthogonal transforms on both sides of a weight (QuIP#-style).

A layer ``y = W x`` is quantized as ``W' = U W V^T`` with ``x' = V x``, so its input second
moment becomes ``H' = V H V^T`` and the output error ``tr(D H D^T)`` is unchanged by the
rotation. ``U`` (``out x out``) and ``V`` (``in x in``) are randomized Hadamard transforms: for
a width ``n = 2^k m`` with ``m`` odd, ``T = (H_{2^k} ⊗ Q_m) diag(s)`` with ``H_{2^k}`` the
normalized Sylvester–Hadamard matrix, ``Q_m`` a random orthogonal ``m x m`` matrix and ``s``
random signs (for ``m = 1`` this is the randomized Hadamard transform of QuIP#; SmolLM2's 576
and 1536 are ``64 x 9`` and ``512 x 3``). The rotated weight has no outlier rows, columns or
entries, which is what a fixed-shape lattice code wants.

Nothing of the transform is stored but a seed per layer (``rotation_seed``, recorded in the
export's manifest); the loader rebuilds ``U`` and ``V`` from it and computes
``W = U^T Ŵ' V``.
"""

from __future__ import annotations

import zlib

import torch
from torch import Tensor

__all__ = ["hadamard", "layer_seed", "rotate", "rotation", "rotation_factors", "unrotate"]


def layer_seed(name: str, base: int = 0) -> int:
    """A stable seed for layer ``name`` (CRC-32 of the name, offset by ``base``)."""
    return (zlib.crc32(name.encode()) + base) % 2**31


def hadamard(n: int) -> Tensor:
    """The normalized ``n x n`` Sylvester–Hadamard matrix (``n`` a power of two, float64)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / n**0.5


def rotation_factors(n: int, seed: int) -> tuple[int, Tensor | None, Tensor]:
    """The factors of :func:`rotation`: ``(2^k, Q_m or None when m = 1, signs)`` (float64).

    ``T x = vec(H_{2^k} X Q_m^T)`` with ``X`` the ``(2^k, m)`` row-major view of ``s * x``,
    which is how :class:`llvq.llm.packed.GLVQLinear` applies it without the ``n x n`` matrix.
    """
    if n < 1:
        raise ValueError(f"a rotation needs a positive width, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    odd = n
    while odd % 2 == 0:
        odd //= 2
    q = None
    if odd > 1:
        q, r = torch.linalg.qr(torch.randn(odd, odd, generator=g, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))  # Haar-distributed
    signs = torch.randint(0, 2, (n,), generator=g, dtype=torch.float64) * 2 - 1
    return n // odd, q, signs


def rotation(n: int, seed: int) -> Tensor:
    """The ``n x n`` randomized Hadamard transform of ``seed`` (float64, orthogonal)."""
    p, q, signs = rotation_factors(n, seed)
    t = hadamard(p)
    if q is not None:
        t = (t[:, None, :, None] * q[None, :, None, :]).reshape(n, n)  # H ⊗ Q
    return t * signs


def _pair(shape: torch.Size, seed: int) -> tuple[Tensor, Tensor]:
    out, inp = shape
    return rotation(out, seed), rotation(inp, seed + 1)


def rotate(w: Tensor, h: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """``(U W V^T, V H V^T)`` in float32 for the transforms of ``seed``."""
    u, v = _pair(w.shape, seed)
    w_r = u @ w.double() @ v.T
    h_r = v @ h.double() @ v.T
    return w_r.float(), h_r.float()


def unrotate(w_r: Tensor, seed: int) -> Tensor:
    """``U^T W' V``: a rotated weight back in the layer's own coordinates (float32)."""
    u, v = _pair(w_r.shape, seed)
    return (u.T @ w_r.double() @ v).float()

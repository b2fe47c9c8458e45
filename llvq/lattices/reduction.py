"""Lenstra–Lenstra–Lovász basis reduction (LLL, 1982) for row bases.

The exact and nearest-plane decoders run on an LLL-reduced basis: short, nearly
orthogonal rows keep the Schnorr–Euchner search tree small (Agrell, Eriksson, Vardy
& Zeger, "Closest point search in lattices", IEEE T-IT 2002, Sec. III-C).
"""

from __future__ import annotations

import numpy as np

__all__ = ["lll"]


def lll(basis: np.ndarray, delta: float = 0.99) -> tuple[np.ndarray, np.ndarray]:
    """LLL-reduce a basis whose ROWS are the basis vectors.

    Works on the R factor of ``basis.T = Q R`` (column ``k`` of ``R`` holds row ``k`` of the
    basis in Gram–Schmidt coordinates), so size reduction is a column update and only a
    swap needs a new factorisation.

    Args:
        basis: ``(n, N)`` float array of ``n`` independent rows.
        delta: Lovász constant in ``(1/4, 1]``.

    Returns:
        ``(reduced, T)``: the reduced basis and the unimodular int64 matrix with
        ``reduced == T @ basis`` (up to rounding).
    """
    b = np.array(basis, dtype=np.float64)
    n = b.shape[0]
    t = np.eye(n, dtype=np.int64)
    _, r = np.linalg.qr(b.T)
    k = 1
    while k < n:
        for j in range(k - 1, -1, -1):
            q = np.round(r[j, k] / r[j, j])
            if q != 0:
                b[k] -= q * b[j]
                t[k] -= int(q) * t[j]
                r[:, k] -= q * r[:, j]
        if r[k, k] ** 2 + r[k - 1, k] ** 2 >= delta * r[k - 1, k - 1] ** 2:
            k += 1
        else:
            b[[k - 1, k]] = b[[k, k - 1]]
            t[[k - 1, k]] = t[[k, k - 1]]
            _, r = np.linalg.qr(b.T)
            k = max(k - 1, 1)
    return t.astype(np.float64) @ np.asarray(basis, dtype=np.float64), t

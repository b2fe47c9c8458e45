"""Exact integer linear algebra for building lattice bases.

Classic lattices are easiest to describe by a *generating set* (more vectors than the
dimension: a code plus ``2 Z^n``, a root lattice plus glue vectors) or as a *section*
(the points orthogonal to a subspace). Both reduce to integer row echelon forms computed
here with Python integers (no overflow), after Cohen, *A Course in Computational
Algebraic Number Theory*, Alg. 2.4.4 (Hermite normal form) and 2.4.10 (integer kernel).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np

__all__ = [
    "basis_from_generators",
    "integer_left_kernel",
    "project_to_span",
    "row_echelon",
    "to_integer_matrix",
]


def row_echelon(rows: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[list[int]], int]:
    """Hermite-style row echelon form by unimodular integer row operations.

    Args:
        rows: an ``m x c`` integer matrix.

    Returns:
        ``(E, U, r)`` with ``U @ A == E``, ``U`` unimodular, ``E`` in echelon form with
        its first ``r`` rows non-zero (entries above each pivot reduced modulo the pivot).
    """
    a = [[int(v) for v in row] for row in rows]
    m = len(a)
    ncol = len(a[0]) if m else 0
    u = [[int(i == j) for j in range(m)] for i in range(m)]
    r = 0
    for c in range(ncol):
        while True:
            nz = [i for i in range(r, m) if a[i][c] != 0]
            if not nz:
                break
            p = min(nz, key=lambda i: abs(a[i][c]))
            a[r], a[p] = a[p], a[r]
            u[r], u[p] = u[p], u[r]
            clean = True
            for i in range(r + 1, m):
                if a[i][c]:
                    q = a[i][c] // a[r][c]
                    a[i] = [x - q * y for x, y in zip(a[i], a[r])]
                    u[i] = [x - q * y for x, y in zip(u[i], u[r])]
                    clean = clean and a[i][c] == 0
            if clean:
                break
        if r < m and a[r][c] != 0:
            if a[r][c] < 0:
                a[r] = [-x for x in a[r]]
                u[r] = [-x for x in u[r]]
            for i in range(r):
                q = a[i][c] // a[r][c]
                if q:
                    a[i] = [x - q * y for x, y in zip(a[i], a[r])]
                    u[i] = [x - q * y for x, y in zip(u[i], u[r])]
            r += 1
    return a, u, r


def basis_from_generators(vectors: Sequence[Sequence[int]]) -> np.ndarray:
    """A basis (rows) of the integer lattice spanned by a generating set.

    Args:
        vectors: ``m x N`` integer generating vectors.

    Returns:
        ``(r, N)`` int64 array whose rows are a basis of the lattice they generate.
    """
    e, _, r = row_echelon(vectors)
    return np.array(e[:r], dtype=np.int64)


def integer_left_kernel(m: Sequence[Sequence[int]]) -> np.ndarray:
    """A basis of ``{u in Z^k : u @ M = 0}`` for an integer ``k x c`` matrix ``M``.

    Returns:
        ``(k - rank, k)`` int64 array (rows are kernel basis vectors).
    """
    _, u, r = row_echelon(m)
    return np.array(u[r:], dtype=np.int64)


def to_integer_matrix(a: np.ndarray, max_denominator: int = 1 << 20) -> tuple[list[list[int]], int]:
    """Write a rational-valued float matrix as ``ints / d`` with the least common ``d``.

    Args:
        a: a float matrix whose entries are (close to) rationals with small denominators.
        max_denominator: largest denominator tried for each entry.

    Returns:
        ``(ints, d)`` with ``a ~= ints / d``.
    """
    fr = [[Fraction(float(v)).limit_denominator(max_denominator) for v in row] for row in a]
    d = 1
    for row in fr:
        for v in row:
            d = d * v.denominator // np.gcd(d, v.denominator)
    return [[int(v * d) for v in row] for row in fr], d


def project_to_span(rows: np.ndarray) -> np.ndarray:
    """Express ``r`` independent vectors of ``R^N`` in an orthonormal basis of their span.

    Gram matrix preserving: the result ``L`` (``r x r``, lower triangular) satisfies
    ``L @ L.T == rows @ rows.T``.
    """
    _, rt = np.linalg.qr(np.asarray(rows, dtype=np.float64).T)  # rows.T = Q R
    return rt.T

"""Glue search: the densest index-2^k superlattice of a direct sum, found by a greedy code search.

Gradient descent on the NSM moves a lattice continuously, so it stays in the basin where it
starts. The best lattices in dimensions 17-23 (sections of the Leech lattice) are not near an
orthogonal splice L1 ⊕ L2 in that sense: they contain such a sum as a sublattice of index
``2^k`` and add *glue* vectors from ``(1/2)(L1 ⊕ L2)`` (Conway & Sloane, SPLAG ch. 4, §3;
the glued lattices of Agrell, Pook-Kolb & Allen 2024 are built the same way). Changing the
glue is a discrete move that SGD cannot make; this module searches it.

Construction. Scale each part to minimum norm 1 and let ``M = L1 ⊕ L2 ⊕ ...`` with basis ``B``.
A superlattice ``L ⊂ (1/2)M`` is ``M + (1/2) C B`` for a binary linear code ``C ⊂ F2^n``
(coordinates over ``B``), of index ``|C|``. ``L`` keeps the minimum norm of ``M`` exactly when
every non-zero ``c ∈ C`` has coset norm ``d(c)^2 = min_{m ∈ M} ||c B / 2 - m||^2 >= 1``; for a
direct sum ``d(c)^2`` is the sum of the parts' coset norms, so one exact closest-point decode per
coset of each part (``2^{n_i}`` of them) gives the table for all ``2^n`` codewords. The search
grows ``C`` one generator at a time, each time the admissible word that leaves the most
admissible words for the next step (scored for all words at once by a Walsh–Hadamard
transform), and restarts ``trials`` times with ties broken at random. Larger index at the same minimum norm is a denser packing; among the codes of the
largest index found, the lowest NSM (a short Monte-Carlo estimate) wins.

Example: ``Lambda16 ⊕ E6`` (dimension 22) has index-64 glue codes whose lattice has the density,
kissing number (49896) and NSM of the Leech section ``Λ22``; the greedy search finds one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from llvq.lattices.counting import enumerate_points
from llvq.lattices.lattice import Lattice
from llvq.lattices.nsm import nsm
from llvq.lattices.reduction import lll
from llvq.lattices.sphere import prepare

__all__ = ["MAX_GLUE_DIM", "GlueResult", "coset_norms", "glue_search", "min_norm"]

#: the code search keeps a table of ``2^n`` coset norms (``n = 24``: 128 MiB of float64).
MAX_GLUE_DIM = 24

_TOL = 1e-9


def min_norm(generator: Tensor) -> float:
    """Squared length of the shortest non-zero vector (LLL, then Fincke–Pohst enumeration)."""
    g = torch.as_tensor(generator, dtype=torch.float64)
    reduced, _ = lll(g.numpy())
    bound = float((reduced ** 2).sum(1).min())
    pts = enumerate_points(torch.from_numpy(reduced), math.sqrt(bound) * (1 + 1e-9))
    norms = (pts ** 2).sum(1)
    return float(norms[norms > 1e-12 * bound].min())


def coset_norms(generator: Tensor, chunk: int = 16_384) -> np.ndarray:
    """``d(c)^2`` for every ``c ∈ {0,1}^n`` (bit ``j`` of the index = ``c_j``): the squared distance
    from ``c B / 2`` to the lattice of ``B`` (rows = basis), by the exact decoder."""
    g = torch.as_tensor(generator, dtype=torch.float64)
    n = g.shape[0]
    basis = prepare(g)
    codes = torch.arange(1 << n, dtype=torch.int64)
    bits = torch.arange(n, dtype=torch.int64)
    out = np.empty(1 << n)
    for s in range(0, 1 << n, chunk):
        c = ((codes[s:s + chunk, None] >> bits) & 1).double()
        x = 0.5 * c @ g
        z = basis.coordinates(x, "exact")
        out[s:s + chunk] = ((x - z @ g) ** 2).sum(1).numpy()
    return out


@dataclass
class GlueResult:
    """A glued lattice: the unit-volume, LLL-reduced generator, its code and how it was found."""

    generator: Tensor
    index_bits: int  # the index of the direct sum in the glued lattice is 2**index_bits
    code: list[int] = field(default_factory=list)  # generators of C, bit j = coordinate j
    candidates: int = 0  # distinct largest-index codes compared by NSM
    nsm_estimate: float = float("nan")  # the short estimate that chose this code


def _span(code: Sequence[int]) -> np.ndarray:
    words = np.zeros(1, dtype=np.int64)
    for g in code:
        words = np.concatenate([words, words ^ g])
    return words


def _fwht(a: np.ndarray) -> np.ndarray:
    """Walsh–Hadamard transform of a length-``2^n`` int64 vector (unnormalised; exact in int64:
    intermediate overflow wraps, and the results used here are small)."""
    for j in range(a.size.bit_length() - 1):
        a = a.reshape(-1, 2, 1 << j)
        a = np.stack((a[:, 0] + a[:, 1], a[:, 0] - a[:, 1]), axis=1)
    return a.reshape(-1)


def _greedy(admissible: np.ndarray, rng: np.random.Generator) -> list[int]:
    """One greedy code: add the admissible ``g`` that keeps the most admissible words (ties at
    random) until none is left.

    After adding ``g`` a word ``c`` stays admissible iff ``ok(c)`` and ``ok(c xor g)`` (the coset
    ``c + g + C`` must keep the minimum norm too), so the score of every ``g`` at once is the
    XOR autocorrelation of ``ok``: two Walsh–Hadamard transforms.
    """
    ok = admissible.copy()
    words = np.arange(ok.size, dtype=np.int64)
    shift = ok.size.bit_length() - 1
    code: list[int] = []
    while ok.any():
        spectrum = _fwht(ok.astype(np.int64))
        score = _fwht(spectrum * spectrum) >> shift
        cand = np.flatnonzero(ok)
        top = cand[score[cand] == score[cand].max()]
        g = int(rng.choice(top))
        code.append(g)
        ok &= ok[words ^ g]
    return code


def _glued_coefficients(code: Sequence[int], n: int) -> np.ndarray:
    """A basis (rows, over the coordinates of ``B``) of ``Z^n + C/2``: reduced row echelon form of
    ``C`` over F2; pivot rows become ``c/2``, every other coordinate keeps ``e_j``."""
    rows = np.array([[(g >> j) & 1 for j in range(n)] for g in code], dtype=np.int64)
    coef = np.eye(n)
    r = 0
    for col in range(n):
        hit = next((i for i in range(r, len(rows)) if rows[i, col]), None)
        if hit is None:
            continue
        rows[[r, hit]] = rows[[hit, r]]
        for i in range(len(rows)):
            if i != r and rows[i, col]:
                rows[i] ^= rows[r]
        r += 1
    for row in rows[:r]:
        coef[int(np.argmax(row))] = 0.5 * row
    return coef


def glue_search(parts: Sequence[Lattice], trials: int = 8, seed: int = 0,
                compare_samples: int = 20_000) -> GlueResult:
    """The densest glued superlattice of ``parts[0] ⊕ parts[1] ⊕ ...`` that the search finds.

    Args:
        parts: the lattices of the direct sum (each is scaled to minimum norm 1 first).
        trials: greedy restarts (they differ in how ties are broken).
        seed: seed of the restarts.
        compare_samples: Monte-Carlo samples of the NSM estimate that picks among distinct
            codes of the largest index (0: take the first).

    Returns:
        a :class:`GlueResult`; ``index_bits == 0`` means no glue keeps the minimum norm, and the
        generator is then the direct sum at equal minimum norms.
    """
    if len(parts) < 2:
        raise ValueError(f"lattice.glue needs two or more parts, got {len(parts)}")
    n = sum(p.dim for p in parts)
    if n > MAX_GLUE_DIM:
        raise ValueError(f"lattice.glue: the glue search tables 2^n coset norms and is limited to "
                         f"n <= {MAX_GLUE_DIM}, got n = {n}")
    if trials < 1:
        raise ValueError(f"lattice.glue_trials={trials}: need at least one restart")
    blocks, table = [], np.zeros(1)
    for p in parts:
        g = p.generator.double() / math.sqrt(min_norm(p.generator))
        blocks.append(g)
        # part i holds the next p.dim bits: index = c_0 + 2^{n_0} c_1 + ...
        table = (coset_norms(g)[:, None] + table[None, :]).reshape(-1)
    admissible = table >= 1.0 - _TOL
    admissible[0] = False
    rng = np.random.default_rng(seed)
    found: dict[tuple, list[int]] = {}
    best = 0
    for _ in range(trials):
        code = _greedy(admissible, rng)
        if len(code) < best:
            continue
        if len(code) > best:
            best, found = len(code), {}
        profile = tuple(np.round(np.sort(table[_span(code)]), 6))  # coset norms of C, as a key
        found.setdefault(profile, code)
    base = torch.block_diag(*blocks)
    scored = []
    for code in found.values():
        g = torch.from_numpy(_glued_coefficients(code, n)) @ base
        g = torch.from_numpy(lll(g.numpy())[0])
        g = g / float(torch.linalg.det(g).abs()) ** (1.0 / n)
        value = (nsm(g, compare_samples, seed=seed)[0]
                 if compare_samples > 0 and len(found) > 1 else float("nan"))
        scored.append((value, g, code))
    value, g, code = min(scored, key=lambda s: (np.nan_to_num(s[0], nan=np.inf)))
    return GlueResult(g, len(code), list(code), len(found), value)

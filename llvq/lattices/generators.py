"""The classic lattices, each declared once in the lattice registry (Conway & Sloane, SPLAG ch. 4, 6).

Every generator is square with ROWS as basis vectors; lattices defined in a larger ambient
space (A_n in the hyperplane ``sum = 0`` of R^(n+1), sections of E8 and the Leech lattice)
are given in an orthonormal basis of their span, so the Gram matrix is exact up to float64.

Names (case-insensitive; any name followed by ``*`` is the dual lattice):
    ``Z<n>``, ``A<n>``, ``A<n>*``, ``D<n>``, ``D<n>*``, ``D<n>+`` (n even; ``E8`` = D8+),
    ``E6``, ``E7``, ``E8``, ``AE9`` (D8 layered with glue ``(1/2^8, a)``, Agrell & Allen 2023),
    ``A11^3`` (A11 with glue [4]), ``Lambda16`` (Barnes–Wall, ``BW16``), ``Lambda24``
    (Leech), ``Lambda17`` ... ``Lambda23`` (sections of the Leech lattice orthogonal to
    E7, E6, D5, D4, A3, A2, A1 in an octad), ``BW16_D4``, ``BW16_A3``, ``BW16_A2``,
    ``BW16_A1`` (sections of Lambda16).

Each construction below is one function decorated with
:func:`~llvq.lattices.registry.register_lattice`, carrying its reference NSM (the independent
Monte-Carlo column of the NSM table, ``/reference/nsm.md``) when it is the lattice llvq uses
for its dimension; :data:`~llvq.lattices.registry.BEST_KNOWN` and the design tables are read
from there. Adding a lattice means adding one such function.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from llvq.lattices.fast import (
    AnDecoder,
    CosetDecoder,
    decode_dn,
    decode_zn,
    helmert_basis,
)
from llvq.lattices.integer import basis_from_generators, integer_left_kernel, project_to_span
from llvq.lattices.lattice import Lattice
from llvq.lattices.reduction import lll
from llvq.lattices.registry import (
    BEST_KNOWN,
    BestKnown,
    get_lattice,
    list_lattices,
    register_lattice,
)

__all__ = ["AE9_HEIGHT", "BEST_KNOWN", "get_lattice", "golay_code", "list_lattices"]

#: height of the glue vector of AE9 (Agrell & Allen 2023); nsm.md lists 0.573224.
AE9_HEIGHT = 0.573224


def _t(a: np.ndarray | Sequence) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def _dn_basis(n: int) -> np.ndarray:
    b = np.zeros((n, n))
    b[0, :2] = -1.0
    for i in range(1, n):
        b[i, i - 1], b[i, i] = 1.0, -1.0
    return b


@register_lattice("Z<n>", pattern=r"z(\d+)\*?", fast="zn", best=[BestKnown(1, "Z1", 1 / 12)])
def _zn(n: int) -> Lattice:
    """The integer lattice Z^n (self-dual: ``Z<n>*`` is ``Z<n>``)."""
    return Lattice(f"Z{n}", torch.eye(n, dtype=torch.float64), decode_zn, "zn")


@register_lattice("D<n>", pattern=r"d(\d+)", fast="dn", best=[BestKnown(4, "D4", 0.076603)])
def _dn(n: int) -> Lattice:
    """The checkerboard lattice D_n (integer points with an even sum)."""
    if n < 2:
        raise ValueError(f"lattice D{n}: D_n needs n >= 2")
    return Lattice(f"D{n}", _t(_dn_basis(n)), decode_dn, "dn")


@register_lattice("D<n>+", pattern=r"d(\d+)\+", fast="dn+",
                  best=[BestKnown(10, "D10+", 0.070814)])
def _dn_plus(n: int) -> Lattice:
    """D_n^+ = D_n ∪ (D_n + ½), a lattice for even n (``D8+`` is ``E8``)."""
    if n < 2 or n % 2:
        raise ValueError(f"lattice D{n}+: D_n^+ is a lattice only for even n >= 2")
    b = np.zeros((n, n))
    b[0, 0] = 2.0
    for i in range(1, n - 1):
        b[i, i - 1], b[i, i] = -1.0, 1.0
    b[n - 1] = 0.5
    glue = torch.stack([torch.zeros(n, dtype=torch.float64), torch.full((n,), 0.5,
                                                                        dtype=torch.float64)])
    name = "E8" if n == 8 else f"D{n}+"
    return Lattice(name, _t(b), CosetDecoder(decode_dn, glue), "dn+")


@register_lattice("D<n>*", pattern=r"d(\d+)\*", fast="dn*", best=[BestKnown(5, "D5*", 0.075625)])
def _dn_star(n: int) -> Lattice:
    """The dual D_n^* = Z^n ∪ (Z^n + ½)."""
    if n < 2:
        raise ValueError(f"lattice D{n}*: D_n* needs n >= 2")
    b = np.eye(n)
    b[n - 1] = 0.5
    glue = torch.stack([torch.zeros(n, dtype=torch.float64), torch.full((n,), 0.5,
                                                                        dtype=torch.float64)])
    return Lattice(f"D{n}*", _t(b), CosetDecoder(decode_zn, glue), "dn*")


def _an_glue(n: int) -> np.ndarray:
    """Glue vectors [i], i = 0..n, of A_n* / A_n in R^(n+1) (SPLAG ch. 4, eq. 55)."""
    m = n + 1
    g = np.zeros((m, m))
    for i in range(m):
        j = m - i
        g[i, :j] = i / m
        g[i, j:] = -j / m
    return g


@register_lattice("A<n>", pattern=r"a(\d+)", fast="an", best=[BestKnown(2, "A2", 0.080188)])
def _an(n: int) -> Lattice:
    """The root lattice A_n (the hyperplane ``sum = 0`` of Z^(n+1)), in an orthonormal basis."""
    if n < 1:
        raise ValueError(f"lattice A{n}: A_n needs n >= 1")
    q = helmert_basis(n).numpy()  # (n+1, n)
    amb = np.zeros((n, n + 1))
    for i in range(n):
        amb[i, i], amb[i, i + 1] = 1.0, -1.0
    return Lattice(f"A{n}", _t(amb @ q), AnDecoder(n), "an")


@register_lattice("A<n>*", pattern=r"a(\d+)\*", fast="an*", best=[BestKnown(3, "A3*", 0.078543)])
def _an_star(n: int) -> Lattice:
    """The dual A_n^*: A_n and its n glue classes (``A3*`` is the body-centred cubic lattice)."""
    base = _an(n)
    glue = _t(_an_glue(n) @ helmert_basis(n).numpy())
    g = torch.linalg.inv(base.generator).T.contiguous()
    return Lattice(f"A{n}*", g, CosetDecoder(AnDecoder(n), glue), "an*")


def _integral(gens: Sequence[Sequence[int]], scale: float, name: str) -> Lattice:
    """Lattice spanned by integer generating vectors times ``scale`` (full rank)."""
    basis = basis_from_generators(gens).astype(np.float64)
    red, _ = lll(basis)
    return Lattice(name, _t(red * scale))


def _section(gens: Sequence[Sequence[int]], spans: Sequence[Sequence[int]], scale: float,
             name: str) -> Lattice:
    """Points of the integer lattice spanned by ``gens`` orthogonal to every row of ``spans``.

    Integer kernel of ``u @ (B @ S.T) = 0`` (Cohen Alg. 2.4.10), then coordinates in an
    orthonormal basis of the section's span.
    """
    basis = basis_from_generators(gens)  # (N, N) int
    m = (basis @ np.asarray(spans, dtype=np.int64).T).tolist()
    kernel = integer_left_kernel(m)  # (N - k, N)
    rows = kernel @ basis
    gen = project_to_span(rows.astype(np.float64))
    red, _ = lll(gen)
    return Lattice(name, _t(red * scale))


def _e8_section(spans: Sequence[Sequence[int]], name: str) -> Lattice:
    e8 = (2 * _dn_plus(8).generator.numpy()).round().astype(np.int64)  # D8+ scaled by 2
    return _section(e8.tolist(), spans, 0.5, name)


def golay_code() -> np.ndarray:
    """Generator ``(12, 24)`` of the extended binary Golay code.

    Cyclic shifts of the quadratic-residue generator polynomial
    ``1 + x^2 + x^4 + x^5 + x^6 + x^10 + x^11`` of length 23, extended by a parity bit.
    """
    g = np.zeros(23, dtype=np.int64)
    g[[0, 2, 4, 5, 6, 10, 11]] = 1
    rows = np.stack([np.roll(g, i) for i in range(12)])
    return np.concatenate([rows, rows.sum(1, keepdims=True) % 2], axis=1)


def _leech_generators() -> list[list[int]]:
    """Generating set of sqrt(8) * Leech (SPLAG ch. 4, Sec. 11): 2c, 4(e0 + ei), 8e0, (-3, 1^23)."""
    gens = (2 * golay_code()).tolist()
    for i in range(1, 24):
        v = [0] * 24
        v[0], v[i] = 4, 4
        gens.append(v)
    gens.append([8] + [0] * 23)
    gens.append([-3] + [1] * 23)
    return gens


def _bw16_generators() -> list[list[int]]:
    """Construction B on the Reed–Muller code RM(1,4) (SPLAG ch. 8, Sec. 2.7): min norm 8."""
    rm = [[1] * 16] + [[(x >> i) & 1 for x in range(16)] for i in range(4)]
    gens = [list(r) for r in rm]
    for i in range(1, 16):
        v = [0] * 16
        v[0], v[i] = 2, 2
        gens.append(v)
    gens.append([4] + [0] * 15)
    return gens


def _root_spans(kind: str, pos: Sequence[int], size: int) -> list[list[int]]:
    """Vectors spanning the root system ``kind`` on coordinates ``pos`` (SPLAG ch. 4)."""
    def vec(entries: dict[int, int]) -> list[int]:
        v = [0] * size
        for i, a in entries.items():
            v[pos[i]] += a
        return v

    if kind.startswith("A"):
        r = int(kind[1:])
        return [vec({i: 1, i + 1: -1}) for i in range(r)]
    if kind.startswith("D"):
        r = int(kind[1:])
        return [vec({i: 1, i + 1: -1}) for i in range(r - 1)] + [vec({r - 2: 1, r - 1: 1})]
    if kind == "E7":  # {x in E8 : x7 = x8}^perp inside the octad is spanned by these
        return [vec({i: 1}) for i in range(6)] + [vec({6: 1, 7: 1})]
    if kind == "E6":  # {x in E8 : x6 = x7 = x8}
        return [vec({i: 1}) for i in range(5)] + [vec({5: 1, 6: 1, 7: 1})]
    raise ValueError(kind)


@register_lattice("E6", best=[BestKnown(6, "E6*", 0.074244)])
def _e6() -> Lattice:
    """E6: the vectors of E8 orthogonal to an A2."""
    return _e8_section([[0, 0, 0, 0, 0, 1, -1, 0], [0, 0, 0, 0, 0, 0, 1, -1]], "E6")


@register_lattice("E7", best=[BestKnown(7, "E7*", 0.073116)])
def _e7() -> Lattice:
    """E7: the vectors of E8 orthogonal to an A1."""
    return _e8_section([[0, 0, 0, 0, 0, 0, 1, -1]], "E7")


@register_lattice("E8", nsm=0.071682, best_for=8, fast="dn+")
def _e8() -> Lattice:
    """E8 = D8^+ (Gosset), with the Conway–Sloane coset decoder."""
    return _dn_plus(8)


@register_lattice("AE9", nsm=0.071623, best_for=9)
def _ae9() -> Lattice:
    """D8 layered with the glue vector ``(1/2^8, AE9_HEIGHT)`` (Agrell & Allen 2023)."""
    b = np.zeros((9, 9))
    b[:8, :8] = _dn_basis(8)
    b[8, :8], b[8, 8] = 0.5, AE9_HEIGHT
    return Lattice("AE9", _t(b))


@register_lattice("A11^3", nsm=0.070426, best_for=11)
def _a11_glue3() -> Lattice:
    """A11 with glue [4] (index 3 over A11)."""
    gens = [[3 * int(j == i) - 3 * int(j == i + 1) for j in range(12)] for i in range(11)]
    gens.append([1] * 8 + [-2] * 4)
    basis = basis_from_generators(gens).astype(np.float64) / 3.0
    red, _ = lll(project_to_span(basis))
    return Lattice("A11^3", _t(red))


@register_lattice("Lambda16", "BW16", nsm=0.068301, best_for=16)
def _barnes_wall() -> Lattice:
    """The Barnes–Wall lattice Λ16 (Construction B on RM(1,4))."""
    return _integral(_bw16_generators(), 2 ** -0.5, "Lambda16")


@register_lattice("Lambda24", "Leech", nsm=0.065755, best_for=24)
def _leech() -> Lattice:
    """The Leech lattice Λ24, from the extended Golay code."""
    return _integral(_leech_generators(), 8 ** -0.5, "Lambda24")


def _leech_section(n: int, perp: str) -> Lattice:
    """Λn for 17 <= n <= 23: the Leech vectors orthogonal to the root lattice ``perp`` in an
    octad's E8."""
    octad = np.flatnonzero(golay_code()[0]).tolist()
    return _section(_leech_generators(), _root_spans(perp, octad, 24), 8 ** -0.5, f"Lambda{n}")


def _bw16_section(kind: str) -> Lattice:
    """The vectors of Λ16 orthogonal to the root lattice ``kind`` on the first coordinates."""
    spans = _root_spans(kind, list(range(16)), 16)
    return _section(_bw16_generators(), spans, 2 ** -0.5, f"BW16_{kind}")


#: Λn = Λ24 ∩ N^⊥ (dimension n, the root lattice N) and its NSM (independent Monte-Carlo).
_LEECH_SECTIONS = {17: ("E7", 0.068217), 18: ("E6", 0.067936), 19: ("D5", 0.067695),
                   20: ("D4", 0.067324), 21: ("A3", 0.067035), 22: ("A2", 0.066656),
                   23: ("A1", 0.066264)}
for _n, (_perp, _nsm) in _LEECH_SECTIONS.items():
    register_lattice(f"Lambda{_n}", nsm=_nsm, best_for=_n)(
        functools.partial(_leech_section, _n, _perp))

#: sections of Λ16 (dimension 16 - rank): the seeds of 12-15, 10^5-sample NSM ± 4e-5, next to
#: the best known NSM of the dimension (its record lattices are not built here; nsm.md).
_BW16_SECTIONS = {
    "D4": [BestKnown(12, "BW16_D4", 0.070619, record=0.070031)],
    "A3": [BestKnown(13, "BW16_A3", 0.071293, record=0.069693)],
    "A2": [BestKnown(14, "BW16_A2", 0.071132, record=0.069261)],
    "A1": [BestKnown(15, "BW16_A1*", 0.069295, record=0.068873)],
}
for _kind, _best in _BW16_SECTIONS.items():
    register_lattice(f"BW16_{_kind}", best=_best)(functools.partial(_bw16_section, _kind))
del _n, _perp, _nsm, _kind, _best

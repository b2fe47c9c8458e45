"""Generator matrices of the classic lattices, by name (Conway & Sloane, SPLAG ch. 4, 6).

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
"""

from __future__ import annotations

import functools
import re
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

__all__ = ["AE9_HEIGHT", "BEST_KNOWN", "get_lattice", "golay_code", "list_lattices"]

#: height of the glue vector of AE9 (Agrell & Allen 2023); nsm.md lists 0.573224.
AE9_HEIGHT = 0.573224

#: the lattice used for each dimension 1-24 in the NSM table (see docs/lattices.md).
BEST_KNOWN: dict[int, str] = {
    1: "Z1", 2: "A2", 3: "A3*", 4: "D4", 5: "D5*", 6: "E6*", 7: "E7*", 8: "E8", 9: "AE9",
    10: "D10+", 11: "A11^3", 12: "BW16_D4", 13: "BW16_A3", 14: "BW16_A2", 15: "BW16_A1*",
    16: "Lambda16", 17: "Lambda17", 18: "Lambda18", 19: "Lambda19", 20: "Lambda20",
    21: "Lambda21", 22: "Lambda22", 23: "Lambda23", 24: "Lambda24",
}

_FIXED = ("E6", "E7", "E8", "AE9", "A11^3", "Lambda16", "Lambda24", "Leech", "BW16",
          *(f"Lambda{n}" for n in range(17, 24)), "BW16_D4", "BW16_A3", "BW16_A2", "BW16_A1")


def list_lattices() -> list[str]:
    """Fixed lattice names plus the families ``Z<n>, A<n>, A<n>*, D<n>, D<n>*, D<n>+``."""
    return ["Z<n>", "A<n>", "A<n>*", "D<n>", "D<n>*", "D<n>+", *_FIXED, "<name>*"]


def _t(a: np.ndarray | Sequence) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def _dn_basis(n: int) -> np.ndarray:
    b = np.zeros((n, n))
    b[0, :2] = -1.0
    for i in range(1, n):
        b[i, i - 1], b[i, i] = 1.0, -1.0
    return b


def _zn(n: int) -> Lattice:
    return Lattice(f"Z{n}", torch.eye(n, dtype=torch.float64), decode_zn, "zn")


def _dn(n: int) -> Lattice:
    if n < 2:
        raise ValueError(f"lattice D{n}: D_n needs n >= 2")
    return Lattice(f"D{n}", _t(_dn_basis(n)), decode_dn, "dn")


def _dn_plus(n: int) -> Lattice:
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


def _dn_star(n: int) -> Lattice:
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


def _an(n: int) -> Lattice:
    if n < 1:
        raise ValueError(f"lattice A{n}: A_n needs n >= 1")
    q = helmert_basis(n).numpy()  # (n+1, n)
    amb = np.zeros((n, n + 1))
    for i in range(n):
        amb[i, i], amb[i, i + 1] = 1.0, -1.0
    return Lattice(f"A{n}", _t(amb @ q), AnDecoder(n), "an")


def _an_star(n: int) -> Lattice:
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


_LEECH_PERP = {23: "A1", 22: "A2", 21: "A3", 20: "D4", 19: "D5", 18: "E6", 17: "E7"}


def _fixed(key: str) -> Lattice:
    if key == "e8":
        return _dn_plus(8)
    if key == "e7":
        return _e8_section([[0, 0, 0, 0, 0, 0, 1, -1]], "E7")
    if key == "e6":
        return _e8_section([[0, 0, 0, 0, 0, 1, -1, 0], [0, 0, 0, 0, 0, 0, 1, -1]], "E6")
    if key == "ae9":
        b = np.zeros((9, 9))
        b[:8, :8] = _dn_basis(8)
        b[8, :8], b[8, 8] = 0.5, AE9_HEIGHT
        return Lattice("AE9", _t(b))
    if key == "a11^3":
        gens = [[3 * int(j == i) - 3 * int(j == i + 1) for j in range(12)] for i in range(11)]
        gens.append([1] * 8 + [-2] * 4)
        basis = basis_from_generators(gens).astype(np.float64) / 3.0
        red, _ = lll(project_to_span(basis))
        return Lattice("A11^3", _t(red))
    if key in ("lambda16", "bw16"):
        return _integral(_bw16_generators(), 2 ** -0.5, "Lambda16")
    if key in ("lambda24", "leech"):
        return _integral(_leech_generators(), 8 ** -0.5, "Lambda24")
    m = re.fullmatch(r"lambda(\d+)", key)
    if m and int(m.group(1)) in _LEECH_PERP:
        n = int(m.group(1))
        octad = np.flatnonzero(golay_code()[0]).tolist()
        spans = _root_spans(_LEECH_PERP[n], octad, 24)
        return _section(_leech_generators(), spans, 8 ** -0.5, f"Lambda{n}")
    m = re.fullmatch(r"bw16_([ad]\d)", key)
    if m:
        kind = m.group(1).upper()
        spans = _root_spans(kind, list(range(16)), 16)
        return _section(_bw16_generators(), spans, 2 ** -0.5, f"BW16_{kind}")
    raise KeyError(key)


@functools.cache
def _build(key: str) -> Lattice:
    m = re.fullmatch(r"([zad])(\d+)([*+]?)", key)
    if m:
        fam, n, suffix = m.group(1), int(m.group(2)), m.group(3)
        if n < 1 or n > 1024:
            raise ValueError(f"lattice dimension must be in 1..1024, got {n}")
        builders = {("z", ""): _zn, ("d", ""): _dn, ("d", "+"): _dn_plus, ("d", "*"): _dn_star,
                    ("a", ""): _an, ("a", "*"): _an_star}
        if (fam, suffix) in builders:
            return builders[(fam, suffix)](n)
        if fam == "z" and suffix == "*":
            return _zn(n)
    try:
        return _fixed(key)
    except KeyError:
        pass
    if key.endswith("*"):
        return _build(key[:-1]).dual()
    raise KeyError(key)


def get_lattice(name: str) -> Lattice:
    """The classic lattice called ``name`` (see the module docstring for the names).

    Args:
        name: e.g. ``"E8"``, ``"D4"``, ``"A2"``, ``"A3*"``, ``"D10+"``, ``"Lambda24"``.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    if not isinstance(name, str):
        raise TypeError(f"lattice name must be a string, got {name!r}")
    try:
        return _build(name.strip().lower())
    except KeyError:
        raise ValueError(f"unknown lattice '{name}'; known lattices: "
                         f"{', '.join(list_lattices())} (set `lattice`)") from None

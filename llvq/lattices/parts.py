"""The parts of a splice or glue: seed lattices by dimension, name or file, and their splice.

The seed lattice of dimension ``n`` and its NSM come from the lattice registry
(:data:`~llvq.lattices.registry.BEST_KNOWN`, the ``nsm`` / ``record`` of each
:func:`~llvq.lattices.registry.register_lattice`): :data:`REFERENCE_NSM` (the best known NSM
per dimension) and :data:`SEED_NSM` (the NSM of the seed) are live views of it, so a lattice
registered by a plugin with ``best_for`` becomes a seed here too.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from llvq.lattices.glue import GlueResult, glue_search
from llvq.lattices.io import load_lattice, load_metadata
from llvq.lattices.lattice import Lattice
from llvq.lattices.objective import precise_nsm
from llvq.lattices.registry import BEST_KNOWN, BestKnownView, get_lattice

__all__ = [
    "GLUE_PARTS",
    "REFERENCE_NSM",
    "SEED_NSM",
    "auto_parts",
    "default_parts",
    "glue_generator",
    "part_lattice",
    "splice_generator",
]

#: best known NSM per dimension (docs: /reference nsm.md, independent Monte-Carlo column).
REFERENCE_NSM: Mapping[int, float] = BestKnownView(lambda r: r.best, "dimension -> best known NSM")

#: NSM of the seed lattice ``get_lattice(BEST_KNOWN[n])`` used for splicing: the reference value,
#: except 12-15 where that lattice is a section of Lambda16 (10^5-sample estimates, ±4e-5).
SEED_NSM: Mapping[int, float] = BestKnownView(lambda r: r.nsm, "dimension -> NSM of the seed")


#: parts of the glue search by dimension: in 17-23 ``Λ16 ⊕ R`` where ``R`` is the orthogonal
#: complement in ``E8`` of the root lattice ``N`` that cuts the Leech section ``Λ24 ∩ N^⊥`` (the
#: best known lattice there). ``Λ16 ⊕ √2 R`` is a sublattice of that section (and ``√2E8 ⊕ √2E8``
#: one of ``Λ16``), so it is where a glue search can find it; the search itself does not know the
#: answer (docs: lattice_design.md).
GLUE_PARTS: dict[int, tuple[str, str]] = {
    16: ("E8", "E8"), 17: ("Lambda16", "A1"), 18: ("Lambda16", "A2"), 19: ("Lambda16", "A3"),
    20: ("Lambda16", "D4"), 21: ("Lambda16", "D5"), 22: ("Lambda16", "E6"),
    23: ("Lambda16", "E7"),
}


def _is_file_part(p: object) -> bool:
    return isinstance(p, (str, Path)) and (str(p).endswith(".safetensors") or Path(p).is_file())


def part_lattice(p: int | str | Path | Lattice) -> Lattice:
    """A part of a splice: a dimension (its best known lattice), a lattice name, or a generator
    file (``.safetensors`` with tensor ``generator``, e.g. a lattice designed here)."""
    if isinstance(p, Lattice):
        return p
    if _is_file_part(p):
        try:
            return load_lattice(p)  # a missing or malformed file: load_generator's ValueError
        except ValueError as err:
            raise ValueError(f"lattice.parts: {err}") from None
    if isinstance(p, (int, np.integer)) and not isinstance(p, bool):
        if int(p) not in BEST_KNOWN:
            raise ValueError(f"lattice.parts: no seed lattice of dimension {p} (known: "
                             f"{min(BEST_KNOWN)}-{max(BEST_KNOWN)})")
        return get_lattice(BEST_KNOWN[int(p)])
    try:
        return get_lattice(str(p))
    except (ValueError, KeyError) as err:
        raise ValueError(f"lattice.parts: unknown seed lattice {p!r} ({err})") from None


def auto_parts(dim: int, max_part: int = 16) -> tuple[int, int]:
    """The split ``n1 + n2 = dim`` whose optimally scaled splice has the lowest NSM.

    Uses ``G = G1^(n1/n) G2^(n2/n)`` with the :data:`SEED_NSM` of each part; parts are at most
    ``max_part``-dimensional (default 16: fuse lattices of lower dimension, not sections of the
    Leech lattice).
    """
    top = min(dim - 1, max_part)
    splits = [(a, dim - a) for a in range(1, top + 1) if a >= dim - a]
    if not splits:
        raise ValueError(f"lattice.dim={dim}: no split into two parts of dimension <= {max_part}; "
                         f"set lattice.parts explicitly")
    return min(splits, key=lambda s: sum(k * math.log(SEED_NSM[k]) for k in s))


def default_parts(dim: int, glue: bool = False) -> list[int | str]:
    """The parts used when ``lattice.parts`` is null: :data:`GLUE_PARTS` for a glue search in
    dimensions 16-23, else :func:`auto_parts`."""
    if glue and dim in GLUE_PARTS:
        return list(GLUE_PARTS[dim])
    return list(auto_parts(dim))


def glue_generator(parts: Sequence[int | str | Path | Lattice], trials: int = 8,
                   seed: int = 0) -> GlueResult:
    """The densest glued superlattice of ``L1 ⊕ L2 ⊕ ...`` (parts as for :func:`splice_generator`)
    that :func:`llvq.lattices.glue.glue_search` finds; unit volume, LLL-reduced.

    The search is deterministic, so its result is kept per process for the same parts (names,
    paths or lattice objects), trials and seed: a benchmark row that reports the glued lattice
    and then fuses from it with two methods searches once (about 25 s in dimension 22).
    """
    found = _glue_once(tuple(parts), trials, seed)
    return dataclasses.replace(found, generator=found.generator.clone(), code=list(found.code))


@functools.lru_cache(maxsize=8)
def _glue_once(parts: tuple, trials: int, seed: int) -> GlueResult:
    return glue_search([part_lattice(p) for p in parts], trials=trials, seed=seed)


def splice_generator(parts: Sequence[int | str | Path | Lattice]) -> Tensor:
    """Block-diagonal generator of ``L1 ⊕ L2 ⊕ ...``, optimally scaled, unit volume (float64).

    A part may be a generator file, e.g. a lattice designed by :func:`design_lattice`: fusing a
    designed ``n``-dimensional lattice with ``Z1`` or ``A2`` builds dimension ``n + 1`` or ``n + 2``
    the way laminated lattices are built (docs: lattice_design.md).

    Each part is scaled to unit volume and then by ``G_i^(-1/2)`` so that every part has the
    same per-dimension second moment, which minimises the NSM of the sum (the weighted AM–GM
    bound ``G = prod G_i^(n_i/n)``); ``G_i`` is the reference value when the part is the best
    known lattice of its dimension, the ``nsm`` metadata of a generator file that has one, else
    a 20,000-sample estimate.
    """
    blocks = []
    for p in parts:
        lat = part_lattice(p)
        g = lat.generator / lat.volume ** (1.0 / lat.dim)
        if lat.dim == 1 or BEST_KNOWN.get(lat.dim, "").lower() == lat.name.lower():
            g_i = SEED_NSM[lat.dim]
        elif _is_file_part(p) and "nsm" in (meta := load_metadata(p)):
            g_i = float(meta["nsm"])  # a designed lattice records its precise NSM
        else:
            g_i = precise_nsm(g, 20_000, seed=0)[0]
        blocks.append(g / math.sqrt(g_i))
    b = torch.block_diag(*blocks)
    return b / float(torch.linalg.det(b).abs()) ** (1.0 / b.shape[0])

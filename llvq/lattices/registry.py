"""The lattice registry: every named construction is declared once, with its reference NSM.

A construction is one decorated function. A fixed lattice takes no argument; a family takes
its dimension and declares the name ``pattern`` it answers (a regular expression matched,
case-insensitively, against the whole name; its groups are the function's arguments)::

    @register_lattice("E8", nsm=0.071682, best_for=8)
    def e8() -> Lattice: ...

    @register_lattice("D<n>", pattern=r"d(\\d+)", best=[BestKnown(4, "D4", 0.076603)])
    def dn(n: int) -> Lattice: ...

The function returns a :class:`~llvq.lattices.lattice.Lattice` (with its fast decoder, when it
has one) or just a generator matrix, which is wrapped with the ``decoder`` given at
registration. Metadata: ``nsm`` is the reference NSM of the construction (from the NSM table,
``/reference/nsm.md``); ``best_for=n`` marks it as the lattice llvq uses for dimension ``n``
(:data:`BEST_KNOWN`, the seeds of lattice design); ``record`` is the best known NSM of that
dimension when the record lattice itself is not implemented. A family, or a construction whose
*dual* is the best one, lists those members in ``best`` (:class:`BestKnown` rows).

:func:`get_lattice` resolves a name: an entry's name or alias (case-insensitive), then a family
pattern, then ``<name>*`` as the dual of ``<name>``; an unknown name loads the outside plugins
(:func:`llvq.plugins.load_plugins`) once before failing. An outside package adds a lattice by
decorating its own function with :func:`register_lattice` in a module it declares as an
``llvq.plugins`` entry point; ``get_lattice("mytoy")`` and ``model/quantizer=lattice
model.quantizer.lattice=mytoy`` then find it.

The built-in constructions live in :mod:`llvq.lattices.generators`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from llvq.lattices.lattice import Lattice
from llvq.plugins import load_plugins
from llvq.registry import Registry

__all__ = [
    "BEST_KNOWN",
    "LATTICES",
    "BestKnown",
    "BestKnownView",
    "as_lattice",
    "best_known",
    "get_lattice",
    "list_lattices",
    "register_lattice",
]

#: every named lattice construction (built-ins from :mod:`llvq.lattices.generators`, plugins).
LATTICES: Registry[Callable[..., Any]] = Registry("lattice", setting="lattice")

#: largest dimension a family member may have.
MAX_DIM = 1024


@dataclass(frozen=True)
class BestKnown:
    """One row of the NSM table: the lattice llvq uses for dimension ``dim``.

    Args:
        dim: the dimension.
        name: the lattice's name as :func:`get_lattice` resolves it (``"D4"``, ``"E6*"``).
        nsm: the reference NSM of that lattice.
        record: the best known NSM of the dimension when a lattice not implemented here holds
            it (``None``: ``nsm`` is the record).
    """

    dim: int
    name: str
    nsm: float
    record: float | None = None

    @property
    def best(self) -> float:
        """The best known NSM of the dimension."""
        return self.nsm if self.record is None else self.record


def register_lattice(name: str, *aliases: str, nsm: float | None = None,
                     best_for: int | None = None, record: float | None = None,
                     best: Iterable[BestKnown] = (), pattern: str | None = None,
                     decoder: Callable[[Tensor], Tensor] | None = None,
                     fast: str | None = None, **info: Any) -> Callable[[Callable], Callable]:
    """Decorator registering a lattice construction under ``name`` (and ``aliases``).

    Args:
        name: the canonical name (``"E8"``; a family: ``"D<n>"``).
        *aliases: more names (``"Leech"`` for ``"Lambda24"``).
        nsm: reference NSM of the construction.
        best_for: the dimension whose best known lattice this is (needs ``nsm``).
        record: the best known NSM of that dimension when another lattice holds it.
        best: further :class:`BestKnown` rows this construction provides (family members, duals).
        pattern: a family: regular expression over the lower-cased name, whose groups are the
            function's arguments (digits become ``int``).
        decoder: fast closest-point decoder, used when the function returns a bare generator.
        fast: name of the fast decoder (``"dn"``), for listings.
        **info: more metadata, read back with ``LATTICES.info(name)``.
    """
    rows = list(best)
    if best_for is not None:
        if nsm is None:
            raise ValueError(f"lattice {name!r}: best_for={best_for} needs its nsm")
        rows.append(BestKnown(int(best_for), name, float(nsm), record))
    regex = re.compile(pattern, re.IGNORECASE) if pattern is not None else None

    def wrap(fn: Callable) -> Callable:
        LATTICES.add(name, fn, *aliases, nsm=nsm, best=tuple(rows), pattern=regex,
                     decoder=decoder, fast=fast, **info)
        _resolve.cache_clear()
        return fn

    return wrap


def _as_lattice_record(obj: Any, name: str, info: Mapping[str, Any]) -> Lattice:
    if isinstance(obj, Lattice):
        return obj
    return Lattice(name, torch.as_tensor(obj, dtype=torch.float64), info.get("decoder"),
                   info.get("fast"))


def _entries() -> Iterator[tuple[str, dict[str, Any]]]:
    """``(name, info)`` of every registered name (aliases included)."""
    for key in LATTICES:  # sorted names
        yield key, LATTICES.info(key)


@functools.cache
def _resolve(key: str) -> Lattice:
    """The lattice called ``key`` (lower-cased), or ``KeyError``."""
    for entry, info in _entries():  # a name or alias
        if info.get("pattern") is None and entry.lower() == key:
            return _as_lattice_record(LATTICES.get(entry)(), info["name"], info)
    for entry, info in _entries():  # a family
        m = info["pattern"].fullmatch(key) if info.get("pattern") is not None else None
        if m is not None and entry == info["name"]:
            args = [int(g) if g.isdigit() else g for g in m.groups()]
            for a in args:
                if isinstance(a, int) and not 1 <= a <= MAX_DIM:
                    raise ValueError(f"lattice dimension must be in 1..{MAX_DIM}, got {a}")
            return _as_lattice_record(LATTICES.get(entry)(*args), key, info)
    if key.endswith("*"):
        return _resolve(key[:-1]).dual()
    raise KeyError(key)


def get_lattice(name: str) -> Lattice:
    """The lattice called ``name`` (case-insensitive; ``<name>*`` is the dual of ``<name>``).

    Args:
        name: e.g. ``"E8"``, ``"D4"``, ``"A2"``, ``"A3*"``, ``"D10+"``, ``"Lambda24"``, or a
            plugin's lattice.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    if not isinstance(name, str):
        raise TypeError(f"lattice name must be a string, got {name!r}")
    key = name.strip().lower()
    for attempt in range(2):
        try:
            return _resolve(key)
        except KeyError:
            if attempt == 0:
                load_plugins()  # a plugin may register it
    raise ValueError(f"unknown lattice '{name}'; known lattices: "
                     f"{', '.join(list_lattices())} (set `lattice`)")


def as_lattice(obj: Lattice | Tensor | str) -> Lattice:
    """A :class:`Lattice` from a lattice, a generator matrix or a registered name."""
    if isinstance(obj, Lattice):
        return obj
    if isinstance(obj, str):
        return get_lattice(obj)
    return Lattice("custom", torch.as_tensor(obj))


def list_lattices(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern``: the families (``Z<n>``, ``D<n>+``,
    ...) first, then the fixed lattices, then ``<name>*`` (any dual)."""
    names = LATTICES.names(pattern)
    families = [n for n in names if LATTICES.info(n).get("pattern") is not None]
    return [*families, *(n for n in names if n not in families), "<name>*"]


def best_known() -> dict[int, BestKnown]:
    """The :class:`BestKnown` row of every dimension the registry covers (the lowest NSM
    wins when several constructions claim a dimension)."""
    rows: dict[int, BestKnown] = {}
    for entry, info in _entries():
        if entry != info["name"]:
            continue  # an alias
        for row in info.get("best", ()):
            if row.dim not in rows or row.nsm < rows[row.dim].nsm:
                rows[row.dim] = row
    return dict(sorted(rows.items()))


class BestKnownView(Mapping[int, Any]):
    """A read-only view ``dim -> value`` of :func:`best_known`, current with every registration."""

    def __init__(self, field: Callable[[BestKnown], Any], doc: str) -> None:
        self._field = field
        self.__doc__ = doc

    def __getitem__(self, dim: int) -> Any:
        return self._field(best_known()[dim])

    def __iter__(self) -> Iterator[int]:
        return iter(best_known())

    def __len__(self) -> int:
        return len(best_known())

    def __repr__(self) -> str:
        return repr(dict(self))


#: the lattice used for each dimension (1-24 built in): ``BEST_KNOWN[8] == "E8"``.
BEST_KNOWN: Mapping[int, str] = BestKnownView(lambda r: r.name, "dimension -> lattice name")

"""The :class:`Lattice` record: a named generator and its closest-point decoder.

Names are resolved in :mod:`llvq.lattices.registry` (``get_lattice``, ``as_lattice``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from llvq.lattices.sphere import _check_points, check_generator, closest_point, prepare

__all__ = ["Lattice"]


@dataclass(frozen=True, eq=False)
class Lattice:
    """A lattice given by a generator whose ROWS are basis vectors (points are ``u @ G``).

    Args:
        name: a short name (``"E8"``, ``"A2"``, ``"Lambda24"``, ``"custom"``).
        generator: ``(n, n)`` full-rank float64 matrix.
        fast_decoder: an exact closest-point decoder working in the generator's coordinates
            (Conway & Sloane); ``None`` falls back to exact sphere decoding.
        fast_name: a name for the fast decoder (``"dn"``, ``"an"``, ...), for reports.
    """

    name: str
    generator: Tensor
    fast_decoder: Callable[[Tensor], Tensor] | None = None
    fast_name: str | None = None
    _inv: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        g = check_generator(self.generator, f"generator of lattice {self.name}")
        g = g.detach().double().cpu()
        object.__setattr__(self, "generator", g)
        object.__setattr__(self, "_inv", torch.linalg.inv(g))

    @property
    def dim(self) -> int:
        """Dimension ``n``."""
        return int(self.generator.shape[0])

    @property
    def volume(self) -> float:
        """Volume of a fundamental cell, ``|det G|``."""
        return float(torch.linalg.det(self.generator).abs())

    def closest_point(self, x: Tensor, method: str | None = None) -> Tensor:
        """The exact nearest lattice point to each ``x: (..., n)`` (in ``x``'s dtype).

        Args:
            x: ``(..., n)`` points.
            method: ``None`` (the fast decoder when there is one, else ``"exact"``),
                ``"fast"``, ``"exact"``, ``"nearest_plane"`` or ``"babai"``.
        """
        if method is None:
            method = "fast" if self.fast_decoder is not None else "exact"
        if method == "fast":
            if self.fast_decoder is None:
                raise ValueError(f"lattice {self.name} has no fast decoder; use "
                                 f"decoder='exact', 'nearest_plane' or 'babai'")
            _check_points(x, self.dim)
            return self.fast_decoder(x)
        return closest_point(self.generator, x, method)

    def coordinates(self, y: Tensor) -> Tensor:
        """Integer coordinates ``u`` (int64) of lattice points ``y = u @ G``."""
        return torch.round(y.double() @ self._inv.to(y.device)).long()

    def closest_coordinates(self, x: Tensor, method: str | None = None) -> Tensor:
        """Integer coordinates (int64, ``(..., n)``) of the nearest lattice point."""
        if method in ("exact", "nearest_plane", "babai") or (
                method is None and self.fast_decoder is None):
            _check_points(x, self.dim)
            return prepare(self.generator).coordinates(x, method or "exact").long()
        return self.coordinates(self.closest_point(x, method))

    def points(self, u: Tensor) -> Tensor:
        """Lattice points ``u @ G`` (float64) of integer coordinates ``u: (..., n)``."""
        return u.double() @ self.generator.to(u.device)

    def dual(self) -> Lattice:
        """The dual lattice, generator ``(G^-1)^T``."""
        name = self.name[:-1] if self.name.endswith("*") else self.name + "*"
        return Lattice(name, self._inv.T.contiguous())

    def __repr__(self) -> str:
        return f"Lattice({self.name}, dim={self.dim}, volume={self.volume:.6g})"

"""The product of blocks shared by the block lattice quantizers (``lattice``, ``bounded_lattice``).

Notation (einops style):
    ...  leading axes
    d    vector width ``dim``
    n    lattice dimension (the *block*);  m = d / n blocks

A block lattice quantizer is one ``n``-dimensional lattice used ``m`` times: ``z: (..., d)`` is
split into ``(..., m, n)``, every block is quantized with the same lattice (and, with a dither,
its own draw from one seeded stream), and the result is merged back. :class:`LatticeBlocks`
holds that shared part — where the lattice comes from, the ``dim % n`` check, the split and the
seeded dither — and the quantizers hold one by composition, as vector-quantize-pytorch's grouped
and residual quantizers hold a base quantizer. It is a plain object, not a module, so the
quantizers' ``state_dict`` keys are those they always had.

Contract (read by callers, never found with ``getattr``): a block lattice quantizer exposes
``block`` (= ``n``, the coordinates one lattice point or one index covers) and ``blocks``
(= ``m``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from llvq.lattices import Lattice, get_lattice, load_lattice, sample_dither

__all__ = ["LatticeBlocks", "resolve_lattice"]


def resolve_lattice(lattice: str, generator: str | Path | Tensor | None = None) -> Lattice:
    """The lattice a quantizer is built on: ``generator`` when given, else the named one.

    Args:
        lattice: a lattice name (``"E8"``, ``"A2"``, ...; see :func:`llvq.lattices.list_lattices`).
        generator: an ``(n, n)`` tensor (rows = basis) or a ``.safetensors`` file with a tensor
            ``generator``; overrides ``lattice``.
    """
    if isinstance(generator, Tensor):
        return Lattice("custom", generator.detach().double().cpu())
    if generator is not None:
        return load_lattice(Path(generator))
    return get_lattice(lattice)


class LatticeBlocks:
    """``dim = blocks * n``: one ``n``-dimensional lattice used on every block of ``z``.

    Args:
        dim: the quantizer's vector width; a multiple of the lattice dimension.
        lattice: the lattice of one block.
        owner: the quantizer's registry name, used in messages.

    Raises:
        ValueError: ``dim`` is not a multiple of the lattice dimension (naming both settings).
    """

    def __init__(self, dim: int, lattice: Lattice, owner: str) -> None:
        n = lattice.dim
        if dim % n:
            raise ValueError(f"quantizer '{owner}': dim={dim} is not divisible by the "
                             f"dimension n={n} of lattice {lattice.name}; set `dim` to a multiple "
                             f"of {n} or choose another `lattice`")
        self.lattice = lattice
        self.dim, self.n, self.blocks = dim, n, dim // n

    def split(self, z: Tensor) -> Tensor:
        """``(..., d) -> (..., m, n)``."""
        return z.unflatten(-1, (self.blocks, self.n))

    @staticmethod
    def merge(x: Tensor) -> Tensor:
        """``(..., m, n) -> (..., d)``."""
        return x.flatten(-2)

    @staticmethod
    def seed(base: int, step: Tensor | int, training: bool) -> int:
        """The dither seed of a call: ``base``, advanced by the training ``step`` in training mode
        (a fresh dither every step; fixed in eval mode, so encoding is deterministic)."""
        return int(base) + (int(step) if training else 0)

    def dither(self, lattice: Lattice, lead: tuple[int, ...], seed: int,
               device: torch.device | str = "cpu") -> Tensor:
        """Dither ``(*lead, m, n)`` (float64) uniform over the Voronoi cell of ``lattice``,
        drawn from ``seed`` (the same on every device)."""
        return sample_dither(lattice, (*lead, self.blocks), seed, device, torch.float64)

    def __repr__(self) -> str:
        return f"LatticeBlocks(dim={self.dim}, lattice={self.lattice.name}, blocks={self.blocks})"

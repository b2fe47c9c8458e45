"""Subtractive dither uniform over the Voronoi cell, reproducible from a seed.

Zamir & Feder, "On lattice quantization noise", IEEE T-IT 42(4), 1996: with a dither
``d`` uniform over the Voronoi cell and known to both ends, the error of
``Q(x + d) - d`` is uniform over the cell and independent of ``x``; its covariance is
``G V^(2/n) I`` for the lattices used here. The dither is ``v - Q(v)`` with ``v`` uniform on
the fundamental parallelepiped, drawn from a ``torch.Generator`` seeded with ``seed``, so
encoder and decoder draw the same values for the same shape.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llvq.lattices.lattice import Lattice
from llvq.lattices.registry import as_lattice

__all__ = ["dithered_dequantize", "dithered_quantize", "sample_dither"]


def sample_dither(lattice: Lattice | Tensor | str, shape: tuple[int, ...], seed: int,
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64,
                  method: str | None = None) -> Tensor:
    """Dither ``(*shape, n)`` uniform over the Voronoi cell of ``lattice``.

    Args:
        lattice: a :class:`Lattice`, a generator or a lattice name.
        shape: leading shape (the lattice dimension is appended).
        seed: seed of the CPU generator (same seed, same shape -> same dither on any device).
        device: output device.
        dtype: output dtype.
        method: closest-point method (default: fast exact, else exact).
    """
    lat = as_lattice(lattice)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    u = torch.rand(*shape, lat.dim, generator=gen, dtype=torch.float64).to(device)
    v = u @ lat.generator.to(device)
    return (v - lat.closest_point(v, method)).to(dtype)


def dithered_quantize(x: Tensor, lattice: Lattice | Tensor | str, seed: int,
                      method: str | None = None) -> Tensor:
    """Integer coordinates (int64, ``(..., n)``) of ``Q(x + d)`` for the seeded dither ``d``."""
    lat = as_lattice(lattice)
    d = sample_dither(lat, tuple(x.shape[:-1]), seed, x.device, torch.float64, method)
    return lat.closest_coordinates(x.double() + d, method)


def dithered_dequantize(codes: Tensor, lattice: Lattice | Tensor | str, seed: int,
                        dtype: torch.dtype = torch.float32, method: str | None = None) -> Tensor:
    """Reconstruction ``u @ G - d`` from :func:`dithered_quantize` codes and the same seed."""
    lat = as_lattice(lattice)
    d = sample_dither(lat, tuple(codes.shape[:-1]), seed, codes.device, torch.float64, method)
    return (lat.points(codes) - d).to(dtype)

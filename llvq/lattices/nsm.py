"""Monte-Carlo estimate of the normalized second moment (NSM) of a lattice quantizer.

``G = E ||x - Q(x)||^2 / (n V^(2/n))`` with ``x`` uniform over a fundamental region
(Conway & Sloane, SPLAG ch. 2, eq. 86; Agrell & Allen, "On the best lattice quantizers",
IEEE T-IT 2023, eq. 3). The parallelepiped ``u @ G, u in [0, 1)^n`` tiles space, and
``x - Q(x)`` is then uniform over the Voronoi cell.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from llvq.lattices.lattice import Lattice
from llvq.lattices.registry import as_lattice

__all__ = ["nsm", "nsm_samples"]


def nsm_samples(lattice: Lattice | Tensor | str, num_samples: int, seed: int = 0,
                method: str | None = None, device: str | torch.device = "cpu") -> Tensor:
    """Per-sample normalized errors ``||x - Q(x)||^2 / (n V^(2/n))`` (float64, ``(N,)``)."""
    lat = as_lattice(lattice)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n = lat.dim
    u = torch.rand(num_samples, n, generator=gen, dtype=torch.float64).to(device)
    x = u @ lat.generator.to(device)  # (N, n) uniform on the fundamental parallelepiped
    y = lat.closest_point(x, method)
    return (x - y).square().sum(-1) / (n * lat.volume ** (2.0 / n))


def nsm(lattice: Lattice | Tensor | str, num_samples: int = 200_000, seed: int = 0,
        method: str | None = None, batch_size: int = 50_000, device: str | torch.device = "cpu",
        progress: Callable[[int, int], None] | None = None) -> tuple[float, float]:
    """Monte-Carlo NSM and its standard error.

    Args:
        lattice: a :class:`Lattice`, a generator (rows = basis) or a lattice name.
        num_samples: number of uniform samples.
        seed: RNG seed; batch ``i`` uses ``seed + i`` so results do not depend on the device.
        method: closest-point method (default: the lattice's fast exact decoder, else
            ``"exact"``); ``"babai"`` / ``"nearest_plane"`` give the NSM of those quantizers.
        batch_size: samples per batch.
        device: where to decode.
        progress: called as ``progress(done, total)`` after every batch.

    Returns:
        ``(G, standard_error)``.
    """
    lat = as_lattice(lattice)
    total, total_sq, done, i = 0.0, 0.0, 0, 0
    while done < num_samples:
        b = min(batch_size, num_samples - done)
        e = nsm_samples(lat, b, seed + i, method, device)
        total += float(e.sum())
        total_sq += float(e.square().sum())
        done += b
        i += 1
        if progress is not None:
            progress(done, num_samples)
    mean = total / done
    var = max(total_sq / done - mean * mean, 0.0) * done / max(done - 1, 1)
    return mean, math.sqrt(var / done)

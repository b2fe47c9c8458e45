"""The objective of lattice design: the NSM with the exact decoder, batch and precise.

For a generator ``B`` (rows = basis), ``u ~ U[0,1)^n``, ``x = u B``, ``z`` the integer
coordinates of the *exact* closest point and ``e = (u - z) B``:
``G(B) = E ||e||^2 / (n |det B|^(2/n))`` (Agrell & Eriksson 1998, eq. 11-13).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from llvq.lattices.sphere import check_generator, prepare

__all__ = ["decode_coordinates", "nsm_loss", "precise_nsm"]


def decode_coordinates(generator: Tensor, x: Tensor) -> Tensor:
    """Integer coordinates (float64, ``(N, n)``) of the exact closest point of each row of ``x``.

    Same answer as ``closest_coordinates(generator, x, "exact")`` (on CPU, float64): the compiled
    Schnorr–Euchner kernel of :mod:`llvq.lattices._ckernel` when a C compiler is available,
    else the batched torch search of :mod:`llvq.lattices.sphere`.
    """
    basis = prepare(generator)
    x64 = x.detach().double().cpu().reshape(-1, basis.n)
    return basis.coordinates(x64, "exact")


def nsm_loss(generator: Tensor, u: Tensor) -> Tensor:
    """Batch estimate of the NSM, differentiable in ``generator`` (Agrell & Eriksson 1998).

    Args:
        generator: ``(n, n)`` float64 generator (rows = basis), any volume.
        u: ``(N, n)`` uniform ``[0, 1)`` coordinates; ``x = u @ generator``.

    Returns:
        scalar ``mean ||(u - z) B||^2 / (n |det B|^(2/n))`` with the nearest-point coordinates
        ``z`` held constant (stop-gradient through the decoder).
    """
    n = generator.shape[0]
    with torch.no_grad():
        z = decode_coordinates(generator.detach(), u @ generator.detach())  # (N, n)
    e = (u - z) @ generator  # (N, n) error, uniform over the Voronoi cell
    vol = torch.linalg.det(generator).abs()
    return e.square().sum(-1).mean() / (n * vol ** (2.0 / n))


def precise_nsm(generator: Tensor, num_samples: int = 200_000, seed: int = 0,
                batch_size: int = 50_000) -> tuple[float, float]:
    """Monte-Carlo NSM ``(G, standard error)`` with the exact decoder (as :func:`llvq.lattices.nsm`)."""
    g = check_generator(generator).detach().double().cpu()
    n = g.shape[0]
    vol = float(torch.linalg.det(g).abs())
    total = total_sq = 0.0
    done, i = 0, 0
    while done < num_samples:
        m = min(batch_size, num_samples - done)
        u = torch.rand(m, n, generator=torch.Generator().manual_seed(seed + i), dtype=torch.float64)
        x = u @ g
        e = (x - decode_coordinates(g, x) @ g).square().sum(-1) / (n * vol ** (2.0 / n))
        total, total_sq, done, i = total + float(e.sum()), total_sq + float(e.square().sum()), done + m, i + 1
    mean = total / done
    var = max(total_sq / done - mean * mean, 0.0) * done / max(done - 1, 1)
    return mean, math.sqrt(var / done)

"""``turbo_scalar``: the scalar rotate-and-quantize baseline of FibQuant (TurboQuant-style).

The same normalize–rotate–store front end as ``fibquant`` (:mod:`llvq.quantizers.sphere`), then
every coordinate of ``u = R z / ‖z‖`` is quantized with ONE Lloyd–Max table of ``L = 2^b``
levels for the marginal of a coordinate of a uniform point on ``S^(d-1)``, the density
``p(t) ∝ (1 - t²)^((d-3)/2)`` on ``[-1, 1]`` (FibQuant's "scalar product specialization").
The table is computed once from that density (Lloyd–Max on a fine grid, no data).

Codes are ``(..., d + 1)`` int64: ``d`` level indices and the norm's bit pattern;
``bits_per_vector = d b + norm bits``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from llvq.quantizers.registry import register
from llvq.quantizers.sphere import SphereFrontEnd, SphereQuantizer

__all__ = ["TurboScalarQuantizer", "lloyd_max_table", "sphere_marginal"]


def sphere_marginal(dim: int, points: int = 40_001) -> tuple[Tensor, Tensor]:
    """``(t, p)``: a grid on ``[-1, 1]`` and the normalized density of one coordinate of a uniform
    point on ``S^(dim-1)``, ``∝ (1 - t²)^((dim-3)/2)`` (float64)."""
    t = torch.linspace(-1, 1, points, dtype=torch.float64)
    p = (1 - t * t).clamp_min(0) ** ((dim - 3) / 2) if dim > 3 else torch.ones_like(t)
    if dim == 2:  # arcsine law: p ∝ (1 - t²)^(-1/2), integrable; drop the infinite end points
        p = (1 - t * t).clamp_min(1e-12) ** -0.5
    if dim == 1:  # a unit scalar is ±1
        p = torch.zeros_like(t)
        p[0] = p[-1] = 1.0
    return t, p / p.sum()


@lru_cache(maxsize=64)
def _table(dim: int, levels: int) -> Tensor:
    t, p = sphere_marginal(dim)
    cdf = p.cumsum(0)
    c = torch.stack([t[int(torch.searchsorted(cdf, (i + 0.5) / levels).clamp_max(len(t) - 1))]
                     for i in range(levels)])  # quantile start
    for _ in range(500):  # Lloyd–Max: cells at midpoints, levels at cell centroids
        edges = torch.bucketize(t, (c[1:] + c[:-1]) / 2)
        mass = torch.zeros(levels, dtype=torch.float64).index_add_(0, edges, p)
        mean = torch.zeros(levels, dtype=torch.float64).index_add_(0, edges, p * t)
        new = torch.where(mass > 0, mean / mass.clamp_min(1e-300), c)
        if torch.allclose(new, c, rtol=0, atol=1e-12):
            break
        c = new
    return c


def lloyd_max_table(dim: int, levels: int) -> Tensor:
    """The ``levels`` sorted Lloyd–Max reconstruction levels (float64) for one coordinate of a
    uniform point on ``S^(dim-1)``."""
    return _table(int(dim), int(levels)).clone()


@register("turbo_scalar")
class TurboScalarQuantizer(SphereQuantizer):
    """Norm + one scalar Lloyd–Max table for every coordinate of ``R z / ‖z‖``.

    Args:
        dim: vector width ``d``.
        bits: ``b`` bits per coordinate (whole, 1 to 8): ``L = 2^b`` levels.
        seed: seed of the shared rotation.
        norm_dtype: how the norm is stored (``float16``, ``bfloat16``, ``float32``).
    """

    vector_codes = False

    def __init__(self, dim: int, bits: int = 2, seed: int = 0, norm_dtype: str = "float16") -> None:
        super().__init__(dim)
        if isinstance(bits, float) and bits.is_integer():
            bits = int(bits)
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
            raise ValueError(f"quantizer 'turbo_scalar': bits={bits!r} must be a whole number "
                             f"from 1 to 8; change `bits`")
        self.bits = bits
        self.codebook_size = 2 ** bits
        self.front = SphereFrontEnd(dim, seed, norm_dtype, self.name)
        self.code_width = self.dim
        self.register_buffer("levels", lloyd_max_table(dim, self.codebook_size).float())

    @property
    def bits_per_vector(self) -> float:
        """``d b`` level bits plus the stored norm."""
        return self.dim * math.log2(self.codebook_size) + self.front.norm_bits

    def encode_impl(self, z: Tensor) -> Tensor:
        norm_code, norm = self.front.norm_codes(z)
        u = self.front.rotate(z, norm).to(self.levels.device)  # (..., d)
        idx = torch.bucketize(u, (self.levels[1:] + self.levels[:-1]) / 2)  # (..., d)
        return torch.cat([idx, norm_code.unsqueeze(-1)], -1)

    def decode(self, codes: Tensor) -> Tensor:
        idx = self.indices(codes)
        return self.front.unrotate(self.levels[idx], self.front.norms(codes[..., -1]))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, bits={self.bits}, norm_dtype={self.front.norm_dtype}"

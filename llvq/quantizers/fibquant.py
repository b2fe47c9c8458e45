"""FibQuant: one shared radial–angular codebook per block of the normalized, rotated vector.

FibQuant ("Universal Vector Quantization for Random-Access KV-Cache Compression", see
``shared/papers/002``): store ``‖z‖``, rotate ``u = R z / ‖z‖`` with a shared Haar rotation
(:mod:`llvq.quantizers.sphere`), cut ``u`` into ``m = d / k`` blocks of ``k`` coordinates and
send each block as the index of its nearest codeword in ONE codebook ``C`` of
``K = round(2^(b k))`` points shared by every block, vector, head and layer. A block is a
spherical-Beta source (radius² ``~ Beta(k/2, (d-k)/2)``, direction uniform on ``S^(k-1)``), so
``C`` is built for that source alone, without calibration data:

1. radial–angular start: ``n_r`` radii at the Beta quantiles ``F⁻¹((i + ½) / n_r)`` times
   quasi-uniform directions on ``S^(k-1)`` (evenly spaced angles for ``k = 2``, the Fibonacci
   sphere for ``k = 3``, the Roberts–Kronecker sequence ``frac(s + j α)``, ``α_i = φ_k^-i``,
   mapped through the Gaussian quantile and normalized for ``k ≥ 4``), the directions shared
   out over the rings in proportion to ``r^(k-1)``;
2. Lloyd–Max refinement on seeded samples of the source, restarted from ``restarts`` starts
   (different ring counts ``n_r`` and sequence offsets); the codebook with the least MSE wins.

The rate is any ``b`` with ``K ≥ 2``: fractional and sub-one-bit rates (``b = 0.5, k = 8``:
``K = 16``) are fixed-length too. Codes are ``(..., m + 1)`` int64: ``m`` indices in
``[0, K)`` and the norm's bit pattern (:data:`llvq.quantizers.sphere.NORM_DTYPES`);
``bits_per_vector = m log2 K + norm bits``. ``k = 1`` is the scalar Lloyd–Max code of one
coordinate, i.e. ``turbo_scalar``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from llvq.quantizers.registry import register
from llvq.quantizers.sphere import (
    SphereFrontEnd,
    SphereQuantizer,
    disk_cached,
    sphere_block_samples,
)

__all__ = ["FibQuantizer", "fibquant_codebook", "lloyd", "nearest", "radial_angular_codebook"]

MAX_CODEBOOK = 1 << 14
_CHUNK = 1 << 22  # distance-matrix entries per chunk


def nearest(x: Tensor, codebook: Tensor) -> Tensor:
    """Index ``(N,)`` of the nearest row of ``codebook (K, k)`` to each row of ``x (N, k)``."""
    c2 = codebook.pow(2).sum(1)  # (K,)
    rows = max(1, _CHUNK // max(1, codebook.shape[0]))
    out = [(c2 - 2 * chunk @ codebook.T).argmin(1) for chunk in x.split(rows)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


def _directions(k: int, n: int, offset: float) -> Tensor:
    """``n`` quasi-uniform unit vectors ``(n, k)`` (float64) on ``S^(k-1)``."""
    j = torch.arange(n, dtype=torch.float64)
    if k == 1:
        return torch.where(j % 2 == 0, 1.0, -1.0).unsqueeze(1)
    if k == 2:
        t = 2 * math.pi * (j + offset) / n
        return torch.stack([t.cos(), t.sin()], 1)
    if k == 3:  # Fibonacci sphere
        z = 1 - (2 * j + 1) / n
        t = math.pi * (3 - math.sqrt(5)) * j + 2 * math.pi * offset
        s = (1 - z * z).clamp_min(0).sqrt()
        return torch.stack([s * t.cos(), s * t.sin(), z], 1)
    phi = 2.0  # Roberts–Kronecker: phi_k is the root of x^(k+1) = x + 1
    for _ in range(64):
        phi = (1 + phi) ** (1 / (k + 1))
    alpha = torch.tensor([phi ** -(i + 1) for i in range(k)], dtype=torch.float64)
    p = torch.frac(offset + (j + 1).unsqueeze(1) * alpha)  # (n, k) in [0, 1)
    g = torch.special.ndtri(p.clamp(1e-9, 1 - 1e-9))
    return g / g.norm(dim=1, keepdim=True)


def radial_angular_codebook(dim: int, block: int, size: int, rings: int,
                            offset: float = 0.5) -> Tensor:
    """The radial–angular start: Beta-quantile radii × quasi-uniform directions, ``(size, block)``.

    Args:
        dim: ``d``, the width of the whole vector (sets the Beta law of the block radius).
        block: ``k``.
        size: ``K`` codewords.
        rings: ``n_r`` radii (at most ``size``; for ``k = 1`` each ring holds ``±r``).
        offset: offset of the direction sequence (restarts vary it).
    """
    from scipy.stats import beta

    if block == dim:  # the block is the whole unit vector: one ring of radius 1
        rings = 1
    rings = max(1, min(rings, size if block > 1 else size // 2 or 1))
    probs = (torch.arange(rings, dtype=torch.float64) + 0.5) / rings
    if block == dim:
        radii = torch.ones(1, dtype=torch.float64)
    else:
        radii = torch.from_numpy(beta.ppf(probs.numpy(), block / 2, (dim - block) / 2)).sqrt()
    if block == 1:  # symmetric scalar levels
        levels = torch.cat([radii, -radii])[:size]
        if levels.numel() < size:
            levels = torch.cat([levels, torch.zeros(size - levels.numel(), dtype=torch.float64)])
        return levels.unsqueeze(1)
    weight = radii ** (block - 1)
    share = weight / weight.sum() * size
    counts = share.floor().long().clamp_min(1)
    while int(counts.sum()) < size:  # largest remainder
        counts[int((share - counts).argmax())] += 1
    while int(counts.sum()) > size:
        counts[int(counts.argmax())] -= 1
    parts = [r * _directions(block, int(n), offset + 0.37 * i)
             for i, (r, n) in enumerate(zip(radii, counts, strict=True)) if n > 0]
    return torch.cat(parts)


def lloyd(x: Tensor, codebook: Tensor, iterations: int, tol: float = 1e-4) -> tuple[Tensor, float]:
    """Lloyd–Max on samples ``x (N, k)`` from ``codebook (K, k)``: ``(codebook, mean squared
    error)``; stops early when an iteration improves the error by less than ``tol`` (relative).
    An empty cell keeps its codeword."""
    c = codebook.clone()
    prev = math.inf
    for _ in range(iterations):
        idx = nearest(x, c)
        err = float((x - c[idx]).pow(2).sum(1).mean())
        if prev - err <= tol * err:
            break
        prev = err
        sums = torch.zeros_like(c).index_add_(0, idx, x)
        counts = torch.bincount(idx, minlength=c.shape[0]).to(x.dtype)
        used = counts > 0
        c[used] = sums[used] / counts[used].unsqueeze(1)
    return c, float((x - c[nearest(x, c)]).pow(2).sum(1).mean())


@lru_cache(maxsize=32)
def _codebook(dim: int, block: int, size: int, restarts: int, iterations: int) -> Tensor:
    key = f"v1-d{dim}-k{block}-K{size}-r{restarts}-i{iterations}"
    return disk_cached("fibquant", key,
                       lambda: _build_codebook(dim, block, size, restarts, iterations))


def _build_codebook(dim: int, block: int, size: int, restarts: int, iterations: int) -> Tensor:
    num = int(min(max(40 * size, 16_384), 131_072))
    x = sphere_block_samples(dim, block, num, seed=12345).float()
    base = max(1, round(size ** (1 / block) / (2 if block > 2 else 1)))
    best, best_err = None, math.inf
    for r in range(restarts):
        rings = max(1, base + (0, 1, -1, 2, -2, 3)[r % 6] + 6 * (r // 6))
        start = radial_angular_codebook(dim, block, size, rings, offset=0.5 + 0.618 * r).float()
        c, err = lloyd(x, start, iterations)
        if err < best_err:
            best, best_err = c, err
    return best


def fibquant_codebook(dim: int, block: int, size: int, restarts: int = 3,
                      iterations: int = 25) -> Tensor:
    """The shared FibQuant codebook ``(size, block)`` (float32) for blocks of a uniform point on
    ``S^(dim-1)``: radial–angular starts refined by multi-restart Lloyd–Max on seeded samples of
    the source (``40 K`` samples, 16k to 131k). Deterministic in its arguments; memoised in
    memory and under ``$LLVQ_CACHE/fibquant`` (default ``<tmp>/llvq-cache``), since a large
    codebook takes seconds to build."""
    return _codebook(int(dim), int(block), int(size), int(restarts), int(iterations)).clone()


@register("fibquant")
class FibQuantizer(SphereQuantizer):
    """FibQuant: ``‖z‖`` + one shared radial–angular codebook index per block of ``R z / ‖z‖``.

    Args:
        dim: vector width ``d`` (a multiple of ``block``).
        bits: ``b``, bits per coordinate of the direction (fractional and < 1 allowed); the
            codebook holds ``K = round(2^(b k))`` points (2 to 16,384).
        block: ``k``, coordinates per codeword.
        seed: seed of the shared rotation.
        restarts: Lloyd–Max restarts when building the codebook.
        iterations: Lloyd iterations per restart.
        norm_dtype: how the norm is stored (``float16``, ``bfloat16``, ``float32``).
    """

    def __init__(self, dim: int, bits: float = 2.0, block: int = 4, seed: int = 0,
                 restarts: int = 3, iterations: int = 25, norm_dtype: str = "float16") -> None:
        super().__init__(dim)
        if not isinstance(block, int) or block < 1 or dim % block:
            raise ValueError(f"quantizer 'fibquant': block={block!r} must be a positive divisor of "
                             f"dim={dim}; change `block` (or `dim`)")
        if not bits > 0:
            raise ValueError(f"quantizer 'fibquant': bits={bits!r} must be > 0")
        size = round(2 ** (float(bits) * block))
        if not 2 <= size <= MAX_CODEBOOK:
            raise ValueError(f"quantizer 'fibquant': bits={bits} x block={block} gives a codebook "
                             f"of {size} points; it must hold 2 to {MAX_CODEBOOK} -- change `bits` "
                             f"or `block`")
        if restarts < 1 or iterations < 0:
            raise ValueError("quantizer 'fibquant': `restarts` must be >= 1 and `iterations` >= 0")
        self.bits, self.block, self.blocks = float(bits), block, dim // block
        self.codebook_size = size
        self.front = SphereFrontEnd(dim, seed, norm_dtype, self.name)
        self.code_width = self.blocks
        self.register_buffer("codebook", fibquant_codebook(dim, block, size, restarts, iterations))

    @property
    def bits_per_vector(self) -> float:
        """``m log2 K`` index bits plus the stored norm."""
        return self.blocks * math.log2(self.codebook_size) + self.front.norm_bits

    def encode_impl(self, z: Tensor) -> Tensor:
        norm_code, norm = self.front.norm_codes(z)
        u = self.front.rotate(z, norm).to(self.codebook.device)  # (..., d)
        idx = nearest(u.reshape(-1, self.block), self.codebook)
        idx = idx.view(*z.shape[:-1], self.blocks)  # (..., m)
        return torch.cat([idx, norm_code.unsqueeze(-1)], -1)  # (..., m + 1)

    def decode(self, codes: Tensor) -> Tensor:
        idx = self.indices(codes)
        u = self.codebook[idx].flatten(-2)  # (..., d)
        return self.front.unrotate(u, self.front.norms(codes[..., -1]))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, bits={self.bits}, block={self.block}, "
                f"codebook_size={self.codebook_size}, norm_dtype={self.front.norm_dtype}")

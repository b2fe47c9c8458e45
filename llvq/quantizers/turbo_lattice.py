"""``turbo_lattice``: the lattice option of the KV-cache codecs — E8 Voronoi codes behind the
normalize–rotate–store front end.

Notation: ``Λ`` the lattice (``E8`` by default, dimension ``n``), ``q`` the code modulus,
``s`` the scale, ``m = d / n`` blocks.

Each block ``x`` of ``u = R z / ‖z‖`` (:mod:`llvq.quantizers.sphere`) is sent as a point of the
Voronoi code ``Λ / qΛ`` (Conway & Sloane 1983): ``λ = Q_Λ(x / s)``, sent as its coordinates
modulo ``q`` — ``q^n`` codewords, exactly ``log2 q`` bits per coordinate — and decoded as the
representative in the Voronoi cell of ``qΛ``, ``c = λ - q Q_Λ(λ / q)``, times ``s``. A block
whose ``λ`` lies outside that cell *overloads* and wraps around.
``s`` minimizes the squared error on seeded samples of the canonical spherical-Beta source, so,
as for FibQuant, no calibration data is involved. ``q = round(2^b)`` (2 to 128): whole bit
rates are exact, other ``b`` give ``log2 q`` bits.

Codes are ``(..., m + 1)`` int64: the mixed-radix index ``Σ_j u_j q^j`` of each block and the
norm's bit pattern; ``bits_per_vector = m n log2 q + norm bits``. The lattice is used read-only
through :func:`llvq.lattices.get_lattice` and its exact closest-point decoder.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from llvq.lattices import Lattice, get_lattice
from llvq.quantizers.registry import register
from llvq.quantizers.sphere import (
    SphereFrontEnd,
    SphereQuantizer,
    disk_cached,
    sphere_block_samples,
)

__all__ = ["TurboLatticeQuantizer", "voronoi_decode", "voronoi_encode"]


#: shrink factors tried for a block whose nearest lattice point is not in the code
SHRINK = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0)


def voronoi_encode(lattice: Lattice, x: Tensor, modulus: int) -> Tensor:
    """Digits ``(N, n)`` in ``[0, q)`` of ``x (N, n)`` (float64) in the Voronoi code ``Λ / qΛ``.

    The nearest lattice point's digits, unless that point is not its own representative (it
    lies outside the Voronoi cell of ``qΛ``, or on its boundary where the representative is
    another point of the coset): then the best of the nearest points to ``β x`` for ``β`` in
    :data:`SHRINK` (``β = 0`` sends 0), so no block is sent as a far-away wrapped point.
    """
    digits = torch.remainder(lattice.closest_coordinates(x), modulus)
    out = voronoi_decode(lattice, digits, modulus)
    over = (out - lattice.points(lattice.closest_coordinates(x))).abs().amax(-1) > 1e-9
    if bool(over.any()):
        xo = x[over]
        best_d, best_e = digits[over], (out[over] - xo).pow(2).sum(-1)
        for beta in SHRINK:
            d = torch.remainder(lattice.closest_coordinates(beta * xo), modulus)
            e = (voronoi_decode(lattice, d, modulus) - xo).pow(2).sum(-1)
            better = e < best_e
            best_d = torch.where(better.unsqueeze(-1), d, best_d)
            best_e = torch.where(better, e, best_e)
        digits = digits.clone()
        digits[over] = best_d
    return digits


def voronoi_decode(lattice: Lattice, digits: Tensor, modulus: int) -> Tensor:
    """The Voronoi-code points ``λ - q Q(λ / q)`` (float64 ``(N, n)``) of digits ``(N, n)``."""
    lam = lattice.points(digits)
    return lam - modulus * lattice.closest_point(lam / modulus)


@lru_cache(maxsize=32)
def _scale(name: str, dim: int, modulus: int) -> float:
    key = f"v1-{name}-d{dim}-q{modulus}"
    return float(disk_cached("turbo_lattice", key, lambda: torch.tensor(
        _search_scale(name, dim, modulus), dtype=torch.float64)))


def _search_scale(name: str, dim: int, modulus: int) -> float:
    lat = get_lattice(name)
    x = sphere_block_samples(dim, lat.dim, 4096, seed=4321)  # (N, n) float64

    def error(log_s: float) -> float:
        s = math.exp(log_s)
        c = voronoi_decode(lat, voronoi_encode(lat, x / s, modulus), modulus)
        return float((x - s * c).pow(2).sum(1).mean())

    sigma = 1 / math.sqrt(dim)
    vol = lat.volume ** (1 / lat.dim)
    a, b = math.log(sigma / vol / modulus * 0.5), math.log(sigma / vol * 8)
    phi = (math.sqrt(5) - 1) / 2
    c1, c2 = b - phi * (b - a), a + phi * (b - a)
    f1, f2 = error(c1), error(c2)
    for _ in range(28):  # golden section on log s
        if f1 <= f2:
            b, c2, f2 = c2, c1, f1
            c1 = b - phi * (b - a)
            f1 = error(c1)
        else:
            a, c1, f1 = c1, c2, f2
            c2 = a + phi * (b - a)
            f2 = error(c2)
    return math.exp(c1 if f1 <= f2 else c2)


@register("turbo_lattice")
class TurboLatticeQuantizer(SphereQuantizer):
    """Norm + a Voronoi lattice code (``E8`` by default) per block of ``R z / ‖z‖``.

    Args:
        dim: vector width ``d`` (a multiple of the lattice dimension).
        bits: bits per coordinate; the code modulus is ``q = round(2^bits)`` (2 to 128).
        lattice: a lattice name (``E8``, ``D4``, ...; see :func:`llvq.lattices.list_lattices`).
        seed: seed of the shared rotation.
        norm_dtype: how the norm is stored (``float16``, ``bfloat16``, ``float32``).
    """

    def __init__(self, dim: int, bits: float = 2.0, lattice: str = "E8", seed: int = 0,
                 norm_dtype: str = "float16") -> None:
        super().__init__(dim)
        lat = get_lattice(lattice)
        n = lat.dim
        if dim % n:
            raise ValueError(f"quantizer 'turbo_lattice': dim={dim} is not divisible by the "
                             f"dimension n={n} of lattice {lattice}; change `dim` or `lattice`")
        modulus = round(2 ** float(bits)) if bits > 0 else 0
        if not 2 <= modulus <= 128:
            raise ValueError(f"quantizer 'turbo_lattice': bits={bits} gives a code modulus "
                             f"q={modulus}; it must be 2 to 128 (bits 1 to 7)")
        self.lattice_name, self.n, self.blocks, self.modulus = lattice, n, dim // n, modulus
        self.bits = math.log2(modulus)
        self.codebook_size = modulus ** n
        self._lattice = lat
        self.front = SphereFrontEnd(dim, seed, norm_dtype, self.name)
        self.code_width = self.blocks
        self.register_buffer("scale", torch.tensor(_scale(lattice, dim, modulus),
                                                   dtype=torch.float64))
        self.register_buffer("radix", modulus ** torch.arange(n, dtype=torch.long))

    @property
    def bits_per_vector(self) -> float:
        """``m n log2 q`` code bits plus the stored norm."""
        return self.dim * self.bits + self.front.norm_bits

    def _digits(self, z: Tensor) -> tuple[Tensor, Tensor]:
        norm_code, norm = self.front.norm_codes(z)
        u = self.front.rotate(z, norm).double()  # (..., d)
        x = u.reshape(-1, self.n) / self.scale  # (N, n)
        return voronoi_encode(self._lattice, x, self.modulus), norm_code

    def encode_impl(self, z: Tensor) -> Tensor:
        digits, norm_code = self._digits(z)
        idx = (digits * self.radix).sum(-1).view(*z.shape[:-1], self.blocks)  # (..., m)
        return torch.cat([idx, norm_code.unsqueeze(-1)], -1)

    def decode(self, codes: Tensor) -> Tensor:
        idx = self.indices(codes)
        digits = (idx.reshape(-1, 1) // self.radix) % self.modulus  # (N, n)
        c = voronoi_decode(self._lattice, digits, self.modulus) * self.scale
        u = c.float().reshape(*idx.shape[:-1], self.dim)
        return self.front.unrotate(u, self.front.norms(codes[..., -1]))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, lattice={self.lattice_name}, bits={self.bits:.3g}, "
                f"modulus={self.modulus}, scale={float(self.scale):.4g}")

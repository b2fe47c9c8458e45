"""Lattice bottlenecks: a product of copies of an n-dimensional lattice, straight-through.

Notation (einops style):
    ...  leading (batch, spatial) axes
    d    vector width ``dim``
    m    number of blocks ``d / n``
    n    lattice dimension

``z: (..., d)`` is split into ``m`` blocks of width ``n`` (a product lattice L^m); each block
is quantized to ``s * Q_L(z / s)`` with a learnable scale ``s``. Codes are the integer
lattice coordinates ``u`` (``z_q = s * u @ G`` per block). With ``dither`` the encoder
quantizes ``z / s + d`` and the decoder returns ``s * (u @ G - d)`` (subtractive dither,
Zamir & Feder 1996), ``d`` uniform over the Voronoi cell and drawn from ``seed`` (fixed in
eval mode, advanced every training step). Training uses the straight-through estimator
and the VQ-VAE loss ``||sg[z] - q||^2 + beta ||z - sg[q]||^2`` (van den Oord et al. 2017,
eq. 3), whose first term trains the scale and a learnable generator
``G = G0 @ expm(A)`` (invertible for every ``A``; LL-VQ-VAE, Kudo et al. 2023).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llvq.lattices import Lattice
from llvq.quantizers.base import Quantizer, QuantizerOutput, check_code_range, check_weight
from llvq.quantizers.blocks import LatticeBlocks, resolve_lattice
from llvq.quantizers.registry import register

__all__ = ["AnQuantizer", "DnQuantizer", "E8Quantizer", "LatticeQuantizer", "ZnQuantizer"]

DECODERS = ("fast", "exact", "babai", "nearest_plane")


@register("lattice")
class LatticeQuantizer(Quantizer):
    """Product-lattice bottleneck with a fixed or learnable generator.

    Args:
        dim: vector width; must be a multiple of the lattice dimension.
        lattice: a lattice name (``"E8"``, ``"D4"``, ``"A2"``, ``"Lambda16"``, ...; see
            :func:`llvq.lattices.list_lattices`); ignored when ``generator`` is given.
        generator: path of a ``.safetensors`` file with a tensor ``generator`` (rows = basis).
        learnable: learn the generator as ``G0 @ expm(A)``, ``A`` initialised to 0.
        decoder: ``"fast"`` (Conway & Sloane, fixed classic lattices), ``"exact"`` (sphere
            decoding), ``"babai"`` or ``"nearest_plane"``; default: fast when it exists and
            the generator is fixed, else exact.
        scale: initial lattice scale ``s``.
        learn_scale: learn ``log s``.
        dither: subtractive dither uniform over the Voronoi cell.
        seed: dither seed.
        radius: bound the codes to lattice points with ``||u @ G|| <= radius`` (a finite
            codebook); overloaded blocks are shrunk radially until they fit and the
            ``overload`` metric reports their fraction.
        beta: commitment weight (>= 0).

    Raises:
        ValueError: in ``forward``/``encode``, when the latents reach lattice coordinates beyond
            ``±2^53`` (:data:`~llvq.quantizers.base.MAX_CODE`): such codes are not exact and
            would soon overflow int64.

    Attributes:
        block: ``n``, the lattice dimension (coordinates per block); ``blocks`` = ``dim / n``.
        product: the :class:`~llvq.quantizers.blocks.LatticeBlocks` (split, seeded dither).
    """

    vector_codes = True

    def __init__(self, dim: int, lattice: str = "E8", generator: str | None = None,
                 learnable: bool = False, decoder: str | None = None, scale: float = 1.0,
                 learn_scale: bool = True, dither: bool = False, seed: int = 0,
                 radius: float | None = None, beta: float = 0.25) -> None:
        super().__init__(dim)
        base = resolve_lattice(lattice, generator)
        self.product = LatticeBlocks(dim, base, self.name)
        n = base.dim
        if decoder is None:
            decoder = "fast" if base.fast_decoder is not None and not learnable else "exact"
        if decoder not in DECODERS:
            raise ValueError(f"quantizer '{self.name}': unknown decoder='{decoder}'; "
                             f"choose one of {DECODERS}")
        if decoder == "fast" and (learnable or base.fast_decoder is None):
            raise ValueError(f"quantizer '{self.name}': decoder='fast' needs a fixed classic "
                             f"lattice with a Conway–Sloane decoder ({base.name}"
                             f"{', learnable' if learnable else ''}); set decoder='exact'")
        if not scale > 0:
            raise ValueError(f"quantizer '{self.name}': `scale` must be positive, got {scale}")
        if radius is not None and not radius > 0:
            raise ValueError(f"quantizer '{self.name}': `radius` must be positive, got {radius}")
        self.lattice = base
        self.n = self.block = n
        self.blocks = self.product.blocks
        self.decoder, self.learnable, self.dither = decoder, learnable, dither
        self.seed, self.radius = int(seed), radius
        self.beta = check_weight(beta, "beta", self.name)
        self.register_buffer("generator0", base.generator.clone())
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        if learnable:
            self.log_map = nn.Parameter(torch.zeros(n, n))
        log_s = torch.tensor(math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_s)
        else:
            self.register_buffer("log_scale", log_s)

    # --- lattice ---------------------------------------------------------------------------
    def generator(self) -> Tensor:
        """Current generator ``(n, n)`` in float64 (differentiable when learnable)."""
        if not self.learnable:
            return self.generator0
        return self.generator0 @ torch.linalg.matrix_exp(self.log_map.double())

    def _current_lattice(self, g: Tensor) -> Lattice:
        return self.lattice if not self.learnable else Lattice(self.lattice.name, g.detach())

    def _dither(self, lat: Lattice, lead: tuple[int, ...], device: torch.device) -> Tensor:
        seed = self.product.seed(self.seed, self.step, self.training)
        return self.product.dither(lat, lead, seed, device)

    def _coords(self, z: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """Codes ``(..., m, n)``, the dither (or None) and the overload mask ``(..., m)``."""
        g = self.generator().detach()
        lat = self._current_lattice(g)
        x = self.product.split(z.detach().double()) / self.log_scale.exp().double()
        d = self._dither(lat, tuple(z.shape[:-1]), z.device) if self.dither else None
        if d is not None:
            x = x + d
        check_code_range(x @ torch.linalg.inv(g), self.name, "`scale`", self)  # before int64 codes
        u = lat.closest_coordinates(x, self.decoder)
        over = torch.zeros(u.shape[:-1], dtype=torch.bool, device=z.device)
        if self.radius is not None:
            u, over = self._bound(lat, x, u)
        return u, d, over

    def _bound(self, lat: Lattice, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Shrink overloaded blocks radially until their lattice point has norm <= radius."""
        norm = lat.points(u).norm(dim=-1)
        over = norm > self.radius * (1 + 1e-9)
        todo = over.clone()
        shrink = torch.where(todo, self.radius / norm.clamp_min(1e-12), 1.0)
        for _ in range(64):
            if not todo.any():
                break
            x = torch.where(todo[..., None], x * shrink[..., None], x)
            u = torch.where(todo[..., None], lat.closest_coordinates(x, self.decoder), u)
            todo = lat.points(u).norm(dim=-1) > self.radius * (1 + 1e-9)
            shrink = torch.full_like(shrink, 0.9)
        return torch.where(todo[..., None], torch.zeros_like(u), u), over

    def _points(self, u: Tensor, d: Tensor | None, g: Tensor) -> Tensor:
        q = u.to(g.dtype) @ g  # (..., m, n)
        if d is not None:
            q = q - d
        return self.product.merge(q * self.log_scale.exp().to(g.dtype))

    # --- contract --------------------------------------------------------------------------
    def quantize(self, z: Tensor) -> QuantizerOutput:
        u, d, over = self._coords(z)
        if self.training:
            self.step += 1
        q = self._points(u, d, self.generator()).to(z.dtype)  # (..., d), grads to s and G
        codebook = F.mse_loss(q, z.detach())
        commitment = F.mse_loss(z, q.detach())
        metrics = {"codebook_loss": codebook.detach(), "commitment": commitment.detach(),
                   "scale": self.log_scale.detach().exp()}
        if self.radius is not None:
            metrics["overload"] = over.float().mean()
        return QuantizerOutput(z_q=z + (q - z).detach(), codes=self.product.merge(u),
                               loss=codebook + self.beta * commitment, metrics=metrics)

    def encode_impl(self, z: Tensor) -> Tensor:
        return self.product.merge(self._coords(z)[0])

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        if codes.shape[-1] != self.dim or codes.is_floating_point():
            raise ValueError(f"quantizer '{self.name}': codes must be integers of shape "
                             f"(..., {self.dim}), got {codes.dtype} {tuple(codes.shape)}")
        u = self.product.split(codes)
        g = self.generator()
        d = self._dither(self._current_lattice(g), tuple(codes.shape[:-1]), codes.device) \
            if self.dither else None
        return self._points(u, d, g).to(self.log_scale.dtype)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, lattice={self.lattice.name}, blocks={self.blocks}, "
                f"decoder={self.decoder}, learnable={self.learnable}, dither={self.dither}, "
                f"radius={self.radius}")


def _default_n(dim: int) -> int:
    return 8 if dim % 8 == 0 else dim


@register("e8")
class E8Quantizer(LatticeQuantizer):
    """The Gosset lattice E8 (= D8+) with the Conway–Sloane decoder, on blocks of 8."""

    def __init__(self, dim: int, **kwargs) -> None:
        super().__init__(dim, lattice="E8", **kwargs)


@register("dn")
class DnQuantizer(LatticeQuantizer):
    """The checkerboard lattice D_n (default n = 8 when it divides ``dim``, else ``dim``)."""

    def __init__(self, dim: int, n: int | None = None, **kwargs) -> None:
        super().__init__(dim, lattice=f"D{n or _default_n(dim)}", **kwargs)


@register("an")
class AnQuantizer(LatticeQuantizer):
    """The root lattice A_n in an n-dimensional basis (default n = 8 or ``dim``)."""

    def __init__(self, dim: int, n: int | None = None, **kwargs) -> None:
        super().__init__(dim, lattice=f"A{n or _default_n(dim)}", **kwargs)


@register("zn")
class ZnQuantizer(LatticeQuantizer):
    """The integer lattice Z^n: scalar rounding with a learnable step (default n = 8 or ``dim``)."""

    def __init__(self, dim: int, n: int | None = None, **kwargs) -> None:
        super().__init__(dim, lattice=f"Z{n or _default_n(dim)}", **kwargs)

"""Bounded lattice quantization: each block is a fixed-length index into a finite lattice code.

Notation (einops style):
    ...  leading axes
    d    vector width ``dim``
    n    lattice dimension;  m = d / n blocks
    K    code size ``2^(R n)`` at ``R`` bits per coordinate; codes are ``(..., m)`` indices

The code is the ``K`` lattice points ``w_k`` nearest to a centre ``c``
(:func:`llvq.lattices.bounded_code`). A block ``x`` is sent as the index ``k`` of the codeword
nearest to ``y = x / zeta + d + c`` and decoded as ``zeta (w_k - c - d)``:

- ``dither="subtractive"`` (default): ``d`` uniform over the Voronoi cell, drawn from ``seed``;
  without overload the error is uniform over the cell of ``zeta L`` (mean 0, per-coordinate
  variance ``NSM zeta^2 V^(2/n)``, Zamir & Feder 1996).
- ``dither="nonsubtractive"``: ``d`` is added but not subtracted; on ``Z1`` this is unbiased
  stochastic rounding (QSGD's quantizer).
- ``dither="none"``.

A block *overloads* when the lattice point nearest to ``y`` is not in the code; it is then sent
as the nearest codeword. ``zeta`` is set by :meth:`BoundedLatticeQuantizer.fit_scale`: the
smallest scale whose overload rate on given data is at most a target, or the scale with the
least squared error. The dither seed is fixed in eval mode and advanced every training step.

This is the quantizer behind the federated compressors ``uniform``, ``qsgd``, ``lattice`` and
``olala`` (:mod:`llvq.federated.compressors`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from llvq.lattices import Lattice, bounded_code, get_lattice, load_lattice, sample_dither
from llvq.lattices.codes import CodeIndex
from llvq.quantizers.base import Quantizer, QuantizerOutput
from llvq.quantizers.registry import register

__all__ = ["DITHERS", "BoundedLatticeQuantizer"]

DITHERS = ("subtractive", "nonsubtractive", "none")
MAX_INDEX_BITS = 20


@register("bounded_lattice")
class BoundedLatticeQuantizer(Quantizer):
    """A product of bounded lattice codes with dither: ``R`` bits per coordinate, exactly.

    Args:
        dim: vector width; a multiple of the lattice dimension.
        lattice: a lattice name (``A2``, ``Z1``, ``D4``, ``E8``, ...); ignored when ``generator``
            is given.
        generator: a ``.safetensors`` file with a tensor ``generator`` or an ``(n, n)`` tensor.
        rate: ``R`` bits per coordinate; ``R * n`` must be a whole number from 1 to 20.
        scale: ``zeta``, the scale of the lattice.
        dither: ``"subtractive"``, ``"nonsubtractive"`` or ``"none"``.
        seed: dither seed.
    """

    def __init__(self, dim: int, lattice: str = "A2", generator: str | Tensor | None = None,
                 rate: float = 2.0, scale: float = 1.0, dither: str = "subtractive",
                 seed: int = 0) -> None:
        super().__init__(dim)
        if isinstance(generator, Tensor):
            base = Lattice("custom", generator.detach().double().cpu())
        elif generator is not None:
            base = load_lattice(Path(generator))
        else:
            base = get_lattice(lattice)
        n = base.dim
        if dim % n:
            raise ValueError(f"quantizer '{self.name}': dim={dim} is not divisible by the "
                             f"dimension n={n} of lattice {base.name}; set `dim` to a multiple "
                             f"of {n} or choose another `lattice`")
        index_bits = float(rate) * n
        if not rate > 0 or abs(index_bits - round(index_bits)) > 1e-9 \
                or not 1 <= round(index_bits) <= MAX_INDEX_BITS:
            raise ValueError(f"quantizer '{self.name}': rate={rate} bits per coordinate times the "
                             f"lattice dimension {n} must be a whole number of index bits from 1 "
                             f"to {MAX_INDEX_BITS}; change `rate` (model.rate) or `lattice`")
        if dither not in DITHERS:
            raise ValueError(f"quantizer '{self.name}': unknown dither='{dither}'; choose one of {DITHERS}")
        if not scale > 0:
            raise ValueError(f"quantizer '{self.name}': `scale` must be positive, got {scale}")
        self.n, self.blocks = n, dim // n
        self.rate, self.index_bits = float(rate), round(index_bits)
        self.codebook_size = 2 ** self.index_bits
        self.dither, self.seed = dither, int(seed)
        self._lattice = base
        self.register_buffer("generator", base.generator.double().clone())
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._index: tuple[bytes, CodeIndex] | None = None

    def code_shape(self, lead: tuple[int, ...]) -> tuple[int, ...]:
        return (*lead, self.blocks)

    # --- lattice and code ------------------------------------------------------------------
    def set_generator(self, g: Tensor) -> None:
        """Use generator ``g`` (rows = basis) from now on; its code is built (and cached) on use."""
        g = g.detach().double().to(self.generator.device)
        if tuple(g.shape) != (self.n, self.n):
            raise ValueError(f"quantizer '{self.name}': generator must be ({self.n}, {self.n}), "
                             f"got {tuple(g.shape)}")
        self.generator.copy_(g)

    def lattice(self) -> Lattice:
        """The current lattice (the named one, with its fast decoder, until the generator changes)."""
        if not torch.equal(self._lattice.generator.to(self.generator), self.generator):
            self._lattice = Lattice("custom", self.generator.detach().cpu().clone())
        return self._lattice

    def code(self) -> tuple[Tensor, Tensor]:
        """``(coords (K, n) int64, centre (n,) float64)`` of the current generator."""
        coords, centre = bounded_code(self.generator, self.codebook_size)
        return coords.to(self.generator.device), centre.to(self.generator.device)

    def _code_index(self) -> CodeIndex:
        """Coordinates -> code index (-1 outside) for the current generator (kept until it changes)."""
        key = self.generator.cpu().numpy().tobytes()
        if self._index is None or self._index[0] != key:
            self._index = (key, CodeIndex(bounded_code(self.generator, self.codebook_size)[0]))
        return self._index[1]

    def sample_dither(self, lead: tuple[int, ...], seed: int | None = None) -> Tensor:
        """Dither ``(*lead, m, n)`` uniform over the Voronoi cell (float64) for ``seed``
        (default: the quantizer's seed, advanced by the step in training mode)."""
        if seed is None:
            seed = self.seed + (int(self.step) if self.training else 0)
        return sample_dither(self.lattice(), (*lead, self.blocks), seed, self.generator.device,
                             torch.float64)

    # --- encoding ---------------------------------------------------------------------------
    def encode_blocks(self, z: Tensor, dither: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Codes ``(..., m)`` and the overload mask ``(..., m)`` of ``z: (..., d)``.

        ``dither`` (``(..., m, n)``) replaces the seeded one (for repeated encodings of the
        same data, e.g. scale fitting).
        """
        x = z.detach().double().unflatten(-1, (self.blocks, self.n)) / self.scale
        coords, centre = self.code()
        if self.dither != "none":
            x = x + (self.sample_dither(tuple(z.shape[:-1])) if dither is None else dither)
        y = (x + centre).reshape(-1, self.n)
        u = self.lattice().closest_coordinates(y)  # (N, n)
        idx = self._code_index()(u)
        over = idx < 0
        if bool(over.any()):
            words = coords.double() @ self.generator
            far = y[over]
            best = torch.cat([torch.cdist(chunk, words).argmin(1) for chunk in far.split(65_536)])
            idx = idx.masked_scatter(over, best)
        lead = tuple(z.shape[:-1])
        return idx.view(*lead, self.blocks), over.view(*lead, self.blocks)

    def encode_impl(self, z: Tensor) -> Tensor:
        return self.encode_blocks(z)[0]

    def decode_with(self, codes: Tensor, dither: Tensor | None) -> Tensor:
        """``zeta (w_k - c - d)`` as float64 ``(..., d)`` for codes ``(..., m)`` and a given dither."""
        coords, centre = self.code()
        w = coords[codes].double() @ self.generator - centre  # (..., m, n)
        if self.dither == "subtractive" and dither is not None:
            w = w - dither
        return (self.scale * w).flatten(-2)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        if codes.is_floating_point() or codes.shape[-1:] != (self.blocks,):
            raise ValueError(f"quantizer '{self.name}': codes must be integers of shape "
                             f"(..., {self.blocks}), got {codes.dtype} {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"quantizer '{self.name}': codes outside [0, {self.codebook_size})")
        d = self.sample_dither(tuple(codes.shape[:-1])) if self.dither == "subtractive" else None
        return self.decode_with(codes, d).float()

    def quantize(self, z: Tensor) -> QuantizerOutput:
        d = self.sample_dither(tuple(z.shape[:-1])) if self.dither != "none" else None
        codes, over = self.encode_blocks(z, d)
        q = self.decode_with(codes, d).to(z.dtype)
        if self.training:
            self.step += 1
        metrics = {"overload": over.float().mean(), "scale": self.scale.detach().float()}
        return QuantizerOutput(z_q=z + (q - z).detach(), codes=codes, loss=z.new_zeros(()),
                               metrics=metrics)

    # --- scale -----------------------------------------------------------------------------
    @torch.no_grad()
    def fit_scale(self, z: Tensor, overload: float | None = 0.01, steps: int = 24,
                  near: float | None = None) -> float:
        """Set ``zeta`` from data ``z: (..., d)`` with this quantizer's dither; returns it.

        Args:
            z: the data to be sent.
            overload: target overload rate: the smallest ``zeta`` whose overload rate is at most
                this (bisection on ``log zeta``); ``None``: the ``zeta`` with the least squared
                error (golden-section search on ``log zeta``).
            steps: bisection / golden-section steps.
            near: a guess of ``zeta``: search within a factor 4 of it (falls back to the full
                bracket when the answer is not inside).
        """
        top = float(z.detach().abs().max()) if z.numel() else 0.0
        if top == 0.0:
            self.scale.fill_(1.0)
            return 1.0
        vol = abs(float(torch.linalg.det(self.generator))) ** (1 / self.n)
        lo, hi = math.log(top / vol * 1e-3), math.log(top / vol * 1e2)
        d = self.sample_dither(tuple(z.shape[:-1])) if self.dither != "none" else None
        zd = z.detach().double()

        def overload_at(log_zeta: float) -> float:
            self.scale.fill_(math.exp(log_zeta))
            return float(self.encode_blocks(zd, d)[1].double().mean())

        def error_at(log_zeta: float) -> float:
            self.scale.fill_(math.exp(log_zeta))
            return float((self.decode_with(self.encode_blocks(zd, d)[0], d) - zd).pow(2).sum())

        if overload is not None:
            if not 0 <= overload < 1:
                raise ValueError(f"quantizer '{self.name}': overload target must be in [0, 1), "
                                 f"got {overload}")
            if near is not None and near > 0:
                a, b = math.log(near / 4), math.log(near * 4)
                if overload_at(a) > overload >= overload_at(b):
                    lo, hi = a, b
            for _ in range(steps):
                mid = 0.5 * (lo + hi)
                lo, hi = (lo, mid) if overload_at(mid) <= overload else (mid, hi)
            zeta = math.exp(hi) * (1 + 1e-6)
        else:
            # the error is smallest near the overload boundary: bracket [zeta(10 %) / 4, zeta(0)]
            lo_b, hi_b = lo, hi
            for _ in range(steps):
                mid = 0.5 * (lo_b + hi_b)
                lo_b, hi_b = (lo_b, mid) if overload_at(mid) <= 0.0 else (mid, hi_b)
            a, b = hi_b - math.log(8.0), hi_b + 1e-6
            phi = (math.sqrt(5) - 1) / 2
            c1, c2 = b - phi * (b - a), a + phi * (b - a)
            f1, f2 = error_at(c1), error_at(c2)
            for _ in range(steps):
                if f1 <= f2:
                    b, c2, f2 = c2, c1, f1
                    c1 = b - phi * (b - a)
                    f1 = error_at(c1)
                else:
                    a, c1, f1 = c1, c2, f2
                    c2 = a + phi * (b - a)
                    f2 = error_at(c2)
            zeta = math.exp(c1 if f1 <= f2 else c2)
        self.scale.fill_(zeta)
        return zeta

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, lattice={self._lattice.name}, blocks={self.blocks}, "
                f"rate={self.rate}, codebook_size={self.codebook_size}, dither={self.dither}")

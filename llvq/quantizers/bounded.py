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
A caller that needs its own generator, scale or seed for one call passes them as keyword
arguments (``q.encode(z, generator=G, scale=zeta, seed=s)``); the quantizer is never mutated
for it.

This is the quantizer behind the federated compressors ``uniform``, ``qsgd``, ``lattice`` and
``olala`` (:mod:`llvq.federated.compressors`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from llvq.lattices import Lattice, bounded_code
from llvq.lattices.codes import CodeIndex
from llvq.quantizers.base import Quantizer, QuantizerOutput, check_latents
from llvq.quantizers.blocks import LatticeBlocks, resolve_lattice
from llvq.quantizers.registry import register

__all__ = ["DITHERS", "BoundedLatticeQuantizer"]

DITHERS = ("subtractive", "nonsubtractive", "none")
MAX_INDEX_BITS = 20
_CACHED = 4  # generators whose lattice and code index are kept (per quantizer)


@register("bounded_lattice")
class BoundedLatticeQuantizer(Quantizer):
    """A product of bounded lattice codes with dither: ``R`` bits per coordinate, exactly.

    The plain contract (``q(z)``, ``q.encode(z)``, ``q.decode(codes)``) uses the quantizer's own
    buffers ``generator`` and ``scale`` and its ``seed``. A caller that needs another generator,
    scale or dither seed for one call (a federated client's per-round lattice) passes them as
    keyword arguments — ``generator=``, ``scale=``, ``seed=`` — to :meth:`encode`,
    :meth:`decode`, :meth:`encode_blocks`, :meth:`decode_with`, :meth:`sample_dither` and
    :meth:`search_scale`; nothing of the quantizer changes, so one quantizer serves every call.

    Args:
        dim: vector width; a multiple of the lattice dimension.
        lattice: a lattice name (``A2``, ``Z1``, ``D4``, ``E8``, ...); ignored when ``generator``
            is given.
        generator: a ``.safetensors`` file with a tensor ``generator`` or an ``(n, n)`` tensor.
        rate: ``R`` bits per coordinate; ``R * n`` must be a whole number from 1 to 20.
        scale: ``zeta``, the scale of the lattice.
        dither: ``"subtractive"``, ``"nonsubtractive"`` or ``"none"``.
        seed: dither seed.

    Attributes:
        block: ``n``, the lattice dimension (coordinates per index); ``blocks`` = ``dim / n``.
        codebook_size: ``K = 2^(R n)`` codewords per block; ``index_bits`` = ``R n``.
        product: the :class:`~llvq.quantizers.blocks.LatticeBlocks` (split, seeded dither).
    """

    def __init__(self, dim: int, lattice: str = "A2", generator: str | Tensor | None = None,
                 rate: float = 2.0, scale: float = 1.0, dither: str = "subtractive",
                 seed: int = 0) -> None:
        super().__init__(dim)
        base = resolve_lattice(lattice, generator)
        self.product = LatticeBlocks(dim, base, self.name)
        n = base.dim
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
        self.n = self.block = n
        self.blocks = self.product.blocks
        self.rate, self.index_bits = float(rate), round(index_bits)
        self.codebook_size = 2 ** self.index_bits
        self.dither, self.seed = dither, int(seed)
        self.register_buffer("generator", base.generator.double().clone())
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        # memo per generator (bytes): its Lattice and code index; a cache, never a setting
        self._lattices: dict[bytes, Lattice] = {}
        self._indices: dict[bytes, CodeIndex] = {}

    def code_shape(self, lead: tuple[int, ...]) -> tuple[int, ...]:
        return (*lead, self.blocks)

    # --- per-call parameters ------------------------------------------------------------------
    def _g(self, generator: Tensor | None) -> Tensor:
        """The generator of a call: ``generator`` (checked, float64) or the buffer."""
        if generator is None:
            return self.generator
        g = generator.detach().to(device=self.generator.device, dtype=torch.float64)
        if tuple(g.shape) != (self.n, self.n):
            raise ValueError(f"quantizer '{self.name}': generator must be ({self.n}, {self.n}), "
                             f"got {tuple(g.shape)}")
        return g

    def _s(self, scale: float | Tensor | None) -> Tensor:
        """The scale of a call as a float64 scalar tensor (default: the ``scale`` buffer)."""
        if scale is None:
            return self.scale
        return torch.as_tensor(scale, dtype=torch.float64, device=self.scale.device)

    @staticmethod
    def _remember(cache: dict, key: bytes, make):  # small FIFO memo
        if key not in cache:
            cache[key] = make()
            if len(cache) > _CACHED:
                cache.pop(next(iter(cache)))
        return cache[key]

    # --- lattice and code ------------------------------------------------------------------
    def set_generator(self, g: Tensor) -> None:
        """Use generator ``g`` (rows = basis) from now on (the plain contract's lattice; a
        per-call generator is passed as ``generator=`` instead)."""
        self.generator.copy_(self._g(g))

    def lattice(self, generator: Tensor | None = None) -> Lattice:
        """The lattice of ``generator`` (default: the buffer): the named lattice, with its fast
        decoder, while the generator is the one it was built with."""
        g = self._g(generator)
        base = self.product.lattice
        if torch.equal(base.generator.to(g), g):
            return base
        key = g.cpu().numpy().tobytes()
        return self._remember(self._lattices, key, lambda: Lattice("custom", g.detach().cpu().clone()))

    def code(self, generator: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(coords (K, n) int64, centre (n,) float64)`` of ``generator`` (default: the buffer)."""
        g = self._g(generator)
        coords, centre = bounded_code(g, self.codebook_size)
        return coords.to(g.device), centre.to(g.device)

    def _code_index(self, g: Tensor) -> CodeIndex:
        """Coordinates -> code index (-1 outside) for generator ``g`` (memoised)."""
        key = g.cpu().numpy().tobytes()
        return self._remember(self._indices, key,
                              lambda: CodeIndex(bounded_code(g, self.codebook_size)[0]))

    def sample_dither(self, lead: tuple[int, ...], seed: int | None = None, *,
                      generator: Tensor | None = None) -> Tensor:
        """Dither ``(*lead, m, n)`` uniform over the Voronoi cell (float64) of ``generator``
        for ``seed`` (default: the quantizer's seed, advanced by the step in training mode)."""
        if seed is None:
            seed = self.product.seed(self.seed, self.step, self.training)
        return self.product.dither(self.lattice(generator), lead, seed, self.generator.device)

    def _call_dither(self, lead: tuple[int, ...], seed: int | None,
                     generator: Tensor | None) -> Tensor | None:
        return None if self.dither == "none" else self.sample_dither(lead, seed, generator=generator)

    # --- encoding ---------------------------------------------------------------------------
    def encode_blocks(self, z: Tensor, dither: Tensor | None = None, *,
                      generator: Tensor | None = None, scale: float | Tensor | None = None,
                      seed: int | None = None) -> tuple[Tensor, Tensor]:
        """Codes ``(..., m)`` and the overload mask ``(..., m)`` of ``z: (..., d)``.

        Args:
            z: the data.
            dither: ``(..., m, n)``, replaces the seeded one (for repeated encodings of the
                same data, e.g. scale fitting).
            generator, scale, seed: this call's lattice, ``zeta`` and dither seed (default: the
                quantizer's own).
        """
        g = self._g(generator)
        x = self.product.split(z.detach().double()) / self._s(scale)
        coords, centre = self.code(g)
        if self.dither != "none":
            x = x + (self.sample_dither(tuple(z.shape[:-1]), seed, generator=generator)
                     if dither is None else dither)
        y = (x + centre).reshape(-1, self.n)
        u = self.lattice(generator).closest_coordinates(y)  # (N, n)
        idx = self._code_index(g)(u)
        over = idx < 0
        if bool(over.any()):
            words = coords.double() @ g
            far = y[over]
            best = torch.cat([torch.cdist(chunk, words).argmin(1) for chunk in far.split(65_536)])
            idx = idx.masked_scatter(over, best)
        lead = tuple(z.shape[:-1])
        return idx.view(*lead, self.blocks), over.view(*lead, self.blocks)

    def encode_impl(self, z: Tensor) -> Tensor:
        return self.encode_blocks(z)[0]

    @torch.no_grad()
    def encode(self, z: Tensor, *, generator: Tensor | None = None,
               scale: float | Tensor | None = None, seed: int | None = None) -> Tensor:
        """Codes ``(..., m)`` of ``z``; ``generator``/``scale``/``seed`` as :meth:`encode_blocks`."""
        check_latents(z, self.dim, self.name)
        return self.encode_blocks(z, generator=generator, scale=scale, seed=seed)[0]

    def decode_with(self, codes: Tensor, dither: Tensor | None, *,
                    generator: Tensor | None = None,
                    scale: float | Tensor | None = None) -> Tensor:
        """``zeta (w_k - c - d)`` as float64 ``(..., d)`` for codes ``(..., m)`` and a given dither
        (``generator``, ``scale``: this call's, default the quantizer's own)."""
        g = self._g(generator)
        coords, centre = self.code(g)
        w = coords[codes].double() @ g - centre  # (..., m, n)
        if self.dither == "subtractive" and dither is not None:
            w = w - dither
        return self.product.merge(self._s(scale) * w)

    @torch.no_grad()
    def decode(self, codes: Tensor, *, generator: Tensor | None = None,
               scale: float | Tensor | None = None, seed: int | None = None) -> Tensor:
        """Vectors ``(..., d)`` (float32) from codes ``(..., m)``; the dither is drawn from
        ``seed``; ``generator``/``scale``/``seed`` default to the quantizer's own."""
        if codes.is_floating_point() or codes.shape[-1:] != (self.blocks,):
            raise ValueError(f"quantizer '{self.name}': codes must be integers of shape "
                             f"(..., {self.blocks}), got {codes.dtype} {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"quantizer '{self.name}': codes outside [0, {self.codebook_size})")
        d = self.sample_dither(tuple(codes.shape[:-1]), seed, generator=generator) \
            if self.dither == "subtractive" else None
        return self.decode_with(codes, d, generator=generator, scale=scale).float()

    def quantize(self, z: Tensor) -> QuantizerOutput:
        d = self._call_dither(tuple(z.shape[:-1]), None, None)
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
        """Set the ``scale`` buffer to :meth:`search_scale` of ``z`` (own generator and seed);
        returns it."""
        zeta = self.search_scale(z, overload, steps, near)
        self.scale.fill_(zeta)
        return zeta

    @torch.no_grad()
    def search_scale(self, z: Tensor, overload: float | None = 0.01, steps: int = 24,
                     near: float | None = None, *, generator: Tensor | None = None,
                     seed: int | None = None) -> float:
        """``zeta`` for data ``z: (..., d)`` with this call's generator and dither; changes nothing.

        Args:
            z: the data to be sent.
            overload: target overload rate: the smallest ``zeta`` whose overload rate is at most
                this (bisection on ``log zeta``); ``None``: the ``zeta`` with the least squared
                error (golden-section search on ``log zeta``).
            steps: bisection / golden-section steps.
            near: a guess of ``zeta``: search within a factor 4 of it (falls back to the full
                bracket when the answer is not inside).
            generator, seed: this call's lattice and dither seed (default: the quantizer's own).
        """
        top = float(z.detach().abs().max()) if z.numel() else 0.0
        if top == 0.0:
            return 1.0
        g = self._g(generator)
        vol = abs(float(torch.linalg.det(g))) ** (1 / self.n)
        lo, hi = math.log(top / vol * 1e-3), math.log(top / vol * 1e2)
        d = self._call_dither(tuple(z.shape[:-1]), seed, generator)
        zd = z.detach().double()

        def overload_at(log_zeta: float) -> float:
            codes = self.encode_blocks(zd, d, generator=generator, scale=math.exp(log_zeta))
            return float(codes[1].double().mean())

        def error_at(log_zeta: float) -> float:
            zeta = math.exp(log_zeta)
            codes = self.encode_blocks(zd, d, generator=generator, scale=zeta)[0]
            return float((self.decode_with(codes, d, generator=generator, scale=zeta) - zd)
                         .pow(2).sum())

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
            return math.exp(hi) * (1 + 1e-6)
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
        return math.exp(c1 if f1 <= f2 else c2)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, lattice={self.product.lattice.name}, blocks={self.blocks}, "
                f"rate={self.rate}, codebook_size={self.codebook_size}, dither={self.dither}")

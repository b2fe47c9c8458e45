"""Update compressors at ``R`` bits per coordinate with exact bit accounting.

Notation:
    P  coordinates of the update ``h`` (padded with zeros to a multiple of L)
    L  sub-vector (lattice) dimension;  m = P / L blocks
    K  codebook size ``2^(R L)``; every block is sent as a fixed-length ``R L``-bit index

Every compressor is built from a registered quantizer (:mod:`llvq.quantizers`):

    ``none``     ``identity``: fp32, ``32 P`` bits.
    ``qsgd``     QSGD (Alistarh et al. 2017): ``bounded_lattice`` on ``Z1`` with ``2^R`` levels
                 ``||h||_2 (-1 + 2k / (2^R - 1))`` and non-subtractive dither, which is exactly
                 QSGD's unbiased stochastic rounding; side info: the scale (fp32).
    ``uniform``  scalar subtractive-dithered quantization: ``bounded_lattice`` on ``Z1``.
    ``lattice``  UVeQFed (Shlezinger et al. 2020): ``bounded_lattice`` with a fixed lattice
                 (``A2`` by default); side info: the scale ``zeta`` (fp32).
    ``olala``    OLALa (Lang et al. 2025, "Online Learned Adaptive Lattice codes"): per client
                 and round a small network with a fixed input outputs ``G``; it is trained online
                 on the client's update with the MSE of the dithered quantization error (the
                 nearest codeword a stop-gradient); side info: ``G`` and ``zeta`` (fp32).

The bounded code and the encoding are those of :class:`llvq.quantizers.BoundedLatticeQuantizer`:
a block ``x`` is the index of the codeword nearest to ``x / zeta + d + c``, decoded as
``zeta (w_k - c - d)``; it overloads when the nearest lattice point is not in the code.
``zeta`` is the smallest scale whose overload rate is at most ``overload`` (bisection), or with
``overload=None`` the scale with the least squared error on the client's update.
The dither is drawn from a seed both ends know (round, client).

The compressors are a :class:`~llvq.registry.Registry` (:data:`COMPRESSORS`): an outside package
adds one with ``@COMPRESSORS.register("mine")`` on a :class:`Compressor` subclass, and
:func:`build_compressor` refuses an option the compressor does not take (naming it). OLALa lives
in :mod:`llvq.federated.olala`; the payload and its checks in :mod:`llvq.federated.payload`.
The one quantizer a compressor holds is never changed per call: the generator, scale and
dither seed of a payload are passed to it as arguments.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from llvq.federated.payload import FLOAT_BITS, Payload, PayloadError, check_side, to_blocks
from llvq.lattices import get_lattice
from llvq.quantizers import BoundedLatticeQuantizer, build
from llvq.registry import Registry

__all__ = [
    "COMPRESSORS",
    "Compressor",
    "LatticeCompressor",
    "NoneCompressor",
    "QSGDCompressor",
    "UniformCompressor",
    "build_compressor",
]


class Compressor:
    """Base: ``compress(h, seed) -> Payload`` on the client, ``decompress(payload, seed)`` on the server.

    Contract (read by :class:`~llvq.modules.FederatedModule`):
        ``name``: the registry name (set by :data:`COMPRESSORS`), also the payload's ``kind``.
        ``rate``: ``R`` bits per coordinate.
        ``block``: ``L``, coordinates per index (rates are allocated in multiples of ``1 / L``).

    Args:
        rate: ``R`` bits per coordinate.
    """

    name: ClassVar[str] = "base"
    block: int = 1

    def __init__(self, rate: float = 2.0) -> None:
        if rate <= 0:
            raise ValueError(f"model.rate must be > 0 bits per coordinate, got {rate}")
        self.rate = float(rate)

    @classmethod
    def options(cls) -> frozenset[str]:
        """The keyword options of the constructor (``rate`` included)."""
        params = inspect.signature(cls.__init__).parameters.values()
        return frozenset(p.name for p in params if p.name != "self" and p.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))

    def compress(self, h: Tensor, seed: int) -> Payload:
        """The payload of update ``h: (P,)``; ``seed`` is the one both ends know."""
        raise NotImplementedError

    def decompress(self, payload: Payload, seed: int, numel: int | None = None) -> Tensor:
        """The server's ``(P,)`` reconstruction; raises :class:`PayloadError` on a bad payload."""
        raise NotImplementedError

    def _check_indices(self, p: Payload, numel: int | None, size: int) -> int:
        if p.kind != self.name:
            raise PayloadError(f"payload of kind '{p.kind}' sent to a '{self.name}' decoder")
        if numel is not None and p.numel != numel:
            raise PayloadError(f"payload has {p.numel} coordinates, the model has {numel}")
        m = math.ceil(p.numel / self.block)
        idx = p.indices
        if not isinstance(idx, Tensor) or idx.dtype != torch.int64 or tuple(idx.shape) != (m,):
            raise PayloadError(f"payload indices must be int64 of shape ({m},), got "
                               f"{getattr(idx, 'dtype', type(idx).__name__)} {tuple(getattr(idx, 'shape', ()))}")
        if m and (int(idx.min()) < 0 or int(idx.max()) >= size):
            raise PayloadError(f"payload indices outside [0, {size})")
        return m


#: every update compressor (outside plugins add theirs through :mod:`llvq.plugins`).
COMPRESSORS: Registry[type[Compressor]] = Registry("compressor", base=Compressor,
                                                   setting="model.compressor")


def build_compressor(name: str, rate: float = 2.0, **options: Any) -> Compressor:
    """The compressor registered as ``name`` (``none``, ``uniform``, ``qsgd``, ``lattice``,
    ``olala`` or a plugin's) at ``rate`` bits per coordinate.

    Raises:
        llvq.registry.RegistryError: an unknown name (listing the known ones) or an option the
            compressor does not take (naming it).
    """
    return COMPRESSORS.build(name, rate=rate, **options)


@COMPRESSORS.register("none")
class NoneCompressor(Compressor):
    """No compression: the ``identity`` quantizer, fp32, ``32 P`` bits."""

    def __init__(self, rate: float = 2.0) -> None:
        super().__init__(rate)
        self.quantizer = build("identity", dim=1)

    def compress(self, h: Tensor, seed: int) -> Payload:
        v = self.quantizer.encode(h.detach().reshape(-1, 1).float().cpu()).reshape(-1)
        return Payload(self.name, v.numel(), torch.zeros(0, dtype=torch.int64), {"values": v},
                       bits=FLOAT_BITS * v.numel(), blocks=v.numel())

    def decompress(self, payload: Payload, seed: int, numel: int | None = None) -> Tensor:
        if payload.kind != self.name:
            raise PayloadError(f"payload of kind '{payload.kind}' sent to a 'none' decoder")
        if numel is not None and payload.numel != numel:
            raise PayloadError(f"payload has {payload.numel} coordinates, the model has {numel}")
        values = check_side(payload, "values", (payload.numel,)).float()
        return self.quantizer.decode(values.view(-1, 1)).reshape(-1)


@COMPRESSORS.register("lattice")
class LatticeCompressor(Compressor):
    """Subtractive-dithered bounded lattice quantization (UVeQFed) of ``L``-dim blocks.

    Built from ``bounded_lattice`` with ``dim = L``; ``uniform`` is it on ``Z1``. The quantizer
    is built once and never changed: every call passes its generator, scale and seed.

    Args:
        rate: ``R`` bits per coordinate; ``R * L`` must be whole.
        lattice: a lattice name (``A2``, ``D4``, ``E8``, ``Z1``, ...).
        overload: target overload probability of the scale fit (0 = none overloads);
            ``None``: the scale with the least squared error on the update.
    """

    send_generator = False
    dither = "subtractive"

    def __init__(self, rate: float = 2.0, lattice: str = "A2", overload: float | None = 0.01) -> None:
        super().__init__(rate)
        if overload is not None and not 0 <= overload < 1:
            raise ValueError(f"model.overload must be in [0, 1) or null (least-error scale), "
                             f"got {overload}")
        base = get_lattice(lattice)
        self.quantizer: BoundedLatticeQuantizer = build(
            "bounded_lattice", dim=base.dim, lattice=lattice, rate=self.rate, dither=self.dither).eval()
        self.lattice = base
        self.block = self.quantizer.block
        self.index_bits = self.quantizer.index_bits
        self.size = self.quantizer.codebook_size
        self.overload = None if overload is None else float(overload)

    def side_bits(self) -> int:
        return FLOAT_BITS * (1 + (self.block ** 2 if self.send_generator else 0))

    def scale_for(self, x: Tensor, g: Tensor, seed: int, near: float | None = None,
                  steps: int = 24) -> float:
        """``zeta`` for blocks ``x: (m, L)`` with generator ``g`` and this seed's dither
        (``near``, ``steps``: see :meth:`BoundedLatticeQuantizer.search_scale`)."""
        return self.quantizer.search_scale(x, self.overload, steps, near, generator=g, seed=seed)

    def error(self, x: Tensor, g: Tensor, zeta: float, seed: int) -> float:
        """Squared error of sending ``x`` with ``(g, zeta)`` and this seed's dither."""
        q = self.quantizer
        d = q.sample_dither((x.shape[0],), seed, generator=g)
        codes = q.encode_blocks(x, d, generator=g, scale=zeta)[0]
        return float((q.decode_with(codes, d, generator=g, scale=zeta) - x).pow(2).sum())

    def generator_and_scale(self, x: Tensor, seed: int) -> tuple[Tensor, float, dict[str, float]]:
        """``(G as sent, zeta, client-side statistics)``; fixed ``G`` here, learned by OLALa."""
        g = self.lattice.generator
        return g, self.scale_for(x, g, seed), {}

    def compress(self, h: Tensor, seed: int) -> Payload:
        x = to_blocks(h, self.block)
        g, zeta, stats = self.generator_and_scale(x, seed)
        side = {"zeta": torch.tensor(zeta, dtype=torch.float32)}
        if self.send_generator:
            side["generator"] = g.float()
            g = side["generator"].double()
        # encode with the side information as stored
        idx, over = self.quantizer.encode_blocks(x, generator=g, scale=float(side["zeta"]), seed=seed)
        return Payload(self.name, h.numel(), idx.view(-1), side,
                       bits=self.index_bits * x.shape[0] + self.side_bits(),
                       overloaded=int(over.sum()), blocks=x.shape[0], stats=stats)

    def decompress(self, payload: Payload, seed: int, numel: int | None = None) -> Tensor:
        m = self._check_indices(payload, numel, self.size)
        zeta = check_side(payload, "zeta", ())
        if float(zeta) <= 0:
            raise PayloadError(f"scale zeta must be > 0, got {float(zeta)}")
        g = self.lattice.generator
        if self.send_generator:
            g = check_side(payload, "generator", (self.block, self.block))
            cond = torch.linalg.cond(g)
            if not bool(torch.isfinite(cond)) or float(cond) > 1e8:
                raise PayloadError(f"generator is singular (condition number {float(cond):.3g})")
        q = self.quantizer
        d = q.sample_dither((m,), seed, generator=g) if self.dither == "subtractive" else None
        x = q.decode_with(payload.indices.view(m, 1), d, generator=g, scale=float(zeta))  # (m, L)
        return x.reshape(-1)[: payload.numel].float()


@COMPRESSORS.register("uniform")
class UniformCompressor(LatticeCompressor):
    """Scalar subtractive-dithered uniform quantization: the lattice compressor on ``Z``."""

    def __init__(self, rate: float = 2.0, overload: float | None = 0.01) -> None:
        super().__init__(rate, "Z1", overload)


@COMPRESSORS.register("qsgd")
class QSGDCompressor(LatticeCompressor):
    """QSGD: ``2^R`` levels ``||h||_2 (-1 + 2k / (2^R - 1))`` with unbiased stochastic rounding.

    The bounded ``Z1`` code of ``2^R`` points at scale ``zeta = 2 ||h||_2 / (2^R - 1)`` with a
    non-subtractive dither: rounding ``x / zeta + d`` with ``d`` uniform on ``[-1/2, 1/2)``
    picks the upper level with probability equal to the distance from the lower one.
    ``R`` must be whole.
    """

    dither = "nonsubtractive"

    def __init__(self, rate: float = 2.0) -> None:
        if float(rate) != int(rate):
            raise ValueError(f"qsgd needs a whole model.rate, got {rate}")
        super().__init__(rate, "Z1", 0.0)
        self.levels = self.size

    def generator_and_scale(self, x: Tensor, seed: int) -> tuple[Tensor, float, dict[str, float]]:
        norm = float(x.norm())
        return self.lattice.generator, (2 * norm / (self.levels - 1) if norm > 0 else 1.0), {}

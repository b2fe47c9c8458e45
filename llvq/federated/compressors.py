"""Update compressors at ``R`` bits per coordinate with exact bit accounting.

Notation:
    P  coordinates of the update ``h`` (padded with zeros to a multiple of L)
    L  sub-vector (lattice) dimension;  m = P / L blocks
    K  codebook size ``2^(R L)``; every block is sent as a fixed-length ``R L``-bit index

Compressors (:data:`COMPRESSORS`):
    ``none``     fp32, ``32 P`` bits.
    ``qsgd``     QSGD (Alistarh et al. 2017) with ``2^R`` levels on ``[-1, 1]`` times ``||h||_2``,
                 unbiased stochastic rounding, fixed-length codes; side info: the norm (fp32).
    ``uniform``  scalar subtractive-dithered quantization: the lattice compressor on ``Z``.
    ``lattice``  UVeQFed (Shlezinger et al. 2020): subtractive-dithered lattice quantization with a
                 fixed lattice (``A2`` by default); side info: the scale ``zeta`` (fp32).
    ``olala``    OLALa (Lang et al., "Online Learning of Lattice quantizers"): per client and round
                 a small network with a fixed input outputs ``G``; it is trained online on the
                 client's update with the MSE of the dithered quantization error (the nearest
                 point a stop-gradient); side info: ``G`` and ``zeta`` (fp32).

The bounded lattice code is the ``K`` points of ``L`` nearest to a centre ``c`` (chosen among
the points ``u G``, ``u in {0, 1/3, 1/2, 2/3}^L``, to minimise the code's radius; e.g. the
mid-rise quantizer ``c = 1/2`` for ``Z``). A block ``x`` is sent as the index of the codeword
nearest to ``x / zeta + d + c``; it *overloads* when the lattice point nearest to that is not
in the code (the codeword is then the nearest one in the code). Decoding is
``zeta (w_k - c - d)``. Without overload the error is uniform over the Voronoi cell of
``zeta L``: mean 0, per-coordinate variance ``NSM zeta^2 V^(2/L)`` (Zamir & Feder 1996).
``zeta`` is the smallest scale whose measured overload rate is at most the target (bisection).
Dither is drawn from a seed both ends know (round, client).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from llvq.lattices import Lattice, enumerate_points, get_lattice, sample_dither

__all__ = [
    "COMPRESSORS",
    "Compressor",
    "LatticeCompressor",
    "NoneCompressor",
    "OlalaCompressor",
    "Payload",
    "PayloadError",
    "QSGDCompressor",
    "bounded_code",
    "build_compressor",
]

FLOAT_BITS = 32


class PayloadError(ValueError):
    """A payload the server refuses: wrong shape, out-of-range index, non-finite or singular side info."""


@dataclass
class Payload:
    """What a client sends.

    Attributes:
        kind: the compressor's name.
        numel: ``P``, coordinates of the update.
        indices: ``(m,)`` int64 codeword indices (``none``: empty).
        side: side information as stored (fp32 tensors: ``zeta``, ``generator``, ``norm``, ``values``).
        bits: bits sent, indices plus side information.
        overloaded: overloaded blocks.
        blocks: ``m``.
    """

    kind: str
    numel: int
    indices: Tensor
    side: dict[str, Tensor] = field(default_factory=dict)
    bits: int = 0
    overloaded: int = 0
    blocks: int = 0


def _blocks(h: Tensor, block: int) -> Tensor:
    flat = h.detach().reshape(-1).double()
    pad = (-flat.numel()) % block
    return torch.cat([flat, flat.new_zeros(pad)]).view(-1, block)  # (m, L)


def _check_side(p: Payload, key: str, shape: tuple[int, ...]) -> Tensor:
    if key not in p.side:
        raise PayloadError(f"payload of '{p.kind}' lacks side information '{key}'")
    t = p.side[key]
    if not isinstance(t, Tensor) or tuple(t.shape) != shape:
        raise PayloadError(f"side information '{key}' must have shape {shape}, got "
                           f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    if not bool(torch.isfinite(t).all()):
        raise PayloadError(f"side information '{key}' has non-finite values")
    return t.double()


_CODE_CACHE: dict[tuple[bytes, int], tuple[Tensor, Tensor]] = {}


def bounded_code(generator: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The ``size`` lattice points nearest to the best centre: ``(coords (K, L) int64, centre (L,))``.

    Deterministic in the bits of ``generator`` (ties broken by distance rounded to 1e-9, then
    coordinates), so client and server build the same code from the same stored ``G``.
    """
    g = generator.detach().double().cpu()
    key = (g.numpy().tobytes(), size)
    if key in _CODE_CACHE:
        return _CODE_CACHE[key]
    n = g.shape[0]
    inv = torch.linalg.inv(g)
    fracs = torch.tensor([0.0, 1 / 3, 0.5, 2 / 3], dtype=torch.float64)
    grid = torch.cartesian_prod(*([fracs] * n)).view(-1, n)
    best: tuple[float, Tensor, Tensor] | None = None
    vol = abs(float(torch.linalg.det(g)))
    r0 = (size * vol / (math.pi ** (n / 2) / math.gamma(n / 2 + 1))) ** (1 / n)
    for frac in grid:
        centre = frac @ g
        radius = r0
        while True:
            pts = enumerate_points(g, radius, center=centre)
            if pts.shape[0] >= size:
                break
            radius *= 1.3
        coords = torch.round(pts @ inv).to(torch.int64)
        dist = (pts - centre).norm(dim=-1)
        order = sorted(range(len(pts)), key=lambda i: (round(float(dist[i]), 9), *coords[i].tolist()))
        chosen = order[:size]
        reach = float(dist[chosen[-1]])
        if best is None or reach < best[0] - 1e-9:
            best = (reach, coords[chosen], centre)
    _CODE_CACHE[key] = (best[1], best[2])
    if len(_CODE_CACHE) > 256:
        _CODE_CACHE.pop(next(iter(_CODE_CACHE)))
    return best[1], best[2]


class Compressor:
    """Base: ``compress(h, seed) -> Payload`` on the client, ``decompress(payload, seed)`` on the server."""

    name: ClassVar[str] = "base"
    block: int = 1

    def __init__(self, rate: float = 2.0) -> None:
        if rate <= 0:
            raise ValueError(f"model.rate must be > 0 bits per coordinate, got {rate}")
        self.rate = float(rate)

    def compress(self, h: Tensor, seed: int) -> Payload:
        raise NotImplementedError

    def decompress(self, payload: Payload, seed: int, numel: int | None = None) -> Tensor:
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


class NoneCompressor(Compressor):
    """No compression: the fp32 update, ``32 P`` bits."""

    name = "none"

    def compress(self, h: Tensor, seed: int) -> Payload:
        v = h.detach().reshape(-1).float().cpu()
        return Payload(self.name, v.numel(), torch.zeros(0, dtype=torch.int64), {"values": v},
                       bits=FLOAT_BITS * v.numel(), blocks=v.numel())

    def decompress(self, payload: Payload, seed: int, numel: int | None = None) -> Tensor:
        if payload.kind != self.name:
            raise PayloadError(f"payload of kind '{payload.kind}' sent to a 'none' decoder")
        if numel is not None and payload.numel != numel:
            raise PayloadError(f"payload has {payload.numel} coordinates, the model has {numel}")
        return _check_side(payload, "values", (payload.numel,)).float()


class QSGDCompressor(Compressor):
    """QSGD with ``2^R`` levels ``-1 + 2k / (2^R - 1)`` times ``||h||_2``; ``R`` must be whole."""

    name = "qsgd"

    def __init__(self, rate: float = 2.0) -> None:
        super().__init__(rate)
        if self.rate != int(self.rate):
            raise ValueError(f"qsgd needs a whole model.rate, got {rate}")
        self.levels = 2 ** int(self.rate)

    def compress(self, h: Tensor, seed: int) -> Payload:
        v = h.detach().reshape(-1).double().cpu()
        norm = torch.tensor(float(v.norm()), dtype=torch.float32)
        t = (v / norm.double().clamp_min(1e-300) + 1) * 0.5 * (self.levels - 1)  # in [0, s-1]
        low = t.floor()
        u = torch.rand(v.shape, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
        idx = (low + (u < t - low).double()).clamp(0, self.levels - 1).to(torch.int64)
        return Payload(self.name, v.numel(), idx, {"norm": norm},
                       bits=int(self.rate) * v.numel() + FLOAT_BITS, blocks=v.numel())

    def decompress(self, payload: Payload, seed: int, numel: int | None = None) -> Tensor:
        self._check_indices(payload, numel, self.levels)
        norm = _check_side(payload, "norm", ())
        return (norm * (-1 + 2 * payload.indices.double() / (self.levels - 1))).float()


class LatticeCompressor(Compressor):
    """Subtractive-dithered bounded lattice quantization (UVeQFed); ``uniform`` is it on ``Z``.

    Args:
        rate: ``R`` bits per coordinate; ``R * L`` must be whole.
        lattice: a lattice name (``A2``, ``D4``, ``E8``, ``Z1``, ...).
        overload: target overload probability of the scale fit (0 = none overloads).
    """

    name = "lattice"
    send_generator = False
    bisection_steps = 24  # relative precision of zeta ~ 2^-24 * ln(1e5)

    def __init__(self, rate: float = 2.0, lattice: str = "A2", overload: float = 0.01) -> None:
        super().__init__(rate)
        if not 0 <= overload < 1:
            raise ValueError(f"model.overload must be in [0, 1), got {overload}")
        self.lattice = get_lattice(lattice)
        self.block = self.lattice.dim
        index_bits = self.rate * self.block
        if abs(index_bits - round(index_bits)) > 1e-9 or round(index_bits) < 1:
            raise ValueError(f"rate {rate} x lattice dimension {self.block} must be a whole number "
                             f">= 1 of index bits; change model.rate or model.lattice")
        self.index_bits = round(index_bits)
        self.size = 2 ** self.index_bits
        self.overload = float(overload)

    def side_bits(self) -> int:
        return FLOAT_BITS * (1 + (self.block ** 2 if self.send_generator else 0))

    def _encode(self, x: Tensor, g: Tensor, zeta: float, seed: int,
                dither: Tensor | None = None) -> tuple[Tensor, Tensor]:
        coords, centre = bounded_code(g, self.size)
        words = coords.double() @ g  # (K, L)
        d = sample_dither(g, (x.shape[0],), seed) if dither is None else dither
        y = x / zeta + d + centre  # (m, L)
        idx = torch.cdist(y, words).argmin(dim=1)
        nearest = Lattice("q", g).closest_coordinates(y)
        over = (nearest != coords[idx]).any(dim=1)
        return idx, over

    def fit_scale(self, x: Tensor, g: Tensor, seed: int) -> float:
        """Smallest ``zeta`` whose overload rate on ``x`` (with this dither) is at most the target."""
        top = float(x.norm(dim=1).max()) if x.numel() else 0.0
        if top == 0.0:
            return 1.0
        vol = abs(float(torch.linalg.det(g))) ** (1 / self.block)
        lo, hi = math.log(top / vol * 1e-3), math.log(top / vol * 1e2)
        d = sample_dither(g, (x.shape[0],), seed)
        for _ in range(self.bisection_steps):
            mid = 0.5 * (lo + hi)
            rate = float(self._encode(x, g, math.exp(mid), seed, d)[1].double().mean())
            lo, hi = (lo, mid) if rate <= self.overload else (mid, hi)
        return math.exp(hi)

    def generator_for(self, x: Tensor, seed: int) -> Tensor:
        """The generator this client uses (fixed here; learned by OLALa)."""
        return self.lattice.generator

    def compress(self, h: Tensor, seed: int) -> Payload:
        x = _blocks(h, self.block)
        side = {}
        g = self.generator_for(x, seed)
        if self.send_generator:
            side["generator"] = g.float()
            g = side["generator"].double()  # quantize with G as stored, so the server matches
        zeta = torch.tensor(self.fit_scale(x, g, seed) * (1 + 1e-6), dtype=torch.float32)
        side["zeta"] = zeta
        idx, over = self._encode(x, g, float(zeta), seed)
        return Payload(self.name, h.numel(), idx, side,
                       bits=self.index_bits * x.shape[0] + self.side_bits(),
                       overloaded=int(over.sum()), blocks=x.shape[0])

    def decompress(self, payload: Payload, seed: int, numel: int | None = None) -> Tensor:
        m = self._check_indices(payload, numel, self.size)
        zeta = _check_side(payload, "zeta", ())
        if float(zeta) <= 0:
            raise PayloadError(f"scale zeta must be > 0, got {float(zeta)}")
        g = self.lattice.generator
        if self.send_generator:
            g = _check_side(payload, "generator", (self.block, self.block))
            cond = torch.linalg.cond(g)
            if not bool(torch.isfinite(cond)) or float(cond) > 1e8:
                raise PayloadError(f"generator is singular (condition number {float(cond):.3g})")
        coords, centre = bounded_code(g, self.size)
        d = sample_dither(g, (m,), seed)
        x = zeta * (coords[payload.indices].double() @ g - centre - d)  # (m, L)
        return x.reshape(-1)[: payload.numel].float()


class UniformCompressor(LatticeCompressor):
    """Scalar subtractive-dithered uniform quantization: the lattice compressor on ``Z``."""

    name = "uniform"

    def __init__(self, rate: float = 2.0, overload: float = 0.01) -> None:
        super().__init__(rate, "Z1", overload)


class GeneratorNet(nn.Module):
    """A fixed input ``s`` through a small MLP gives ``G = G0 + f_theta(s)`` (``f`` starts at 0), rescaled to ``|det G0|``."""

    def __init__(self, g0: Tensor, hidden: int = 16, in_dim: int = 4) -> None:
        super().__init__()
        n = g0.shape[0]
        self.register_buffer("g0", g0.double().clone())
        self.register_buffer("s", torch.ones(in_dim, dtype=torch.float64))
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, n * n)).double()
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self) -> Tensor:
        g = self.g0 + self.net(self.s).view_as(self.g0)
        # the scale is zeta's job: keep the volume of G0, so the network learns the shape
        ratio = self.g0.det().abs() / g.det().abs().clamp_min(1e-12)
        return g * ratio ** (1.0 / g.shape[0])


class OlalaCompressor(LatticeCompressor):
    """OLALa: a per-client, per-round generator learned online on the client's own update.

    Args:
        rate, lattice, overload: as :class:`LatticeCompressor`; ``lattice`` is the starting ``G0``.
        epochs: passes of mini-batch Adam over the update's blocks.
        lr: learning rate of the generator network.
        batch_size: blocks per mini-batch.
        hidden: width of the generator network.
    """

    name = "olala"
    send_generator = True

    def __init__(self, rate: float = 2.0, lattice: str = "A2", overload: float = 0.01,
                 epochs: int = 3, lr: float = 1e-3, batch_size: int = 256, hidden: int = 16) -> None:
        super().__init__(rate, lattice, overload)
        self.epochs, self.lr, self.batch_size, self.hidden = int(epochs), float(lr), int(batch_size), int(hidden)

    def generator_for(self, x: Tensor, seed: int) -> Tensor:
        g0 = self.lattice.generator
        if self.epochs <= 0 or x.shape[0] == 0 or float(x.abs().max()) == 0:
            return g0
        data = x / self.fit_scale(x, g0, seed)  # in units where G0's code fits the target
        gen = torch.Generator().manual_seed(int(seed) + 1)
        net = GeneratorNet(g0, self.hidden)
        with torch.no_grad():
            for p in net.net[0].parameters():
                p.uniform_(-0.5, 0.5, generator=gen)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        for _ in range(self.epochs):
            perm = torch.randperm(data.shape[0], generator=gen)
            for start in range(0, data.shape[0], self.batch_size):
                xb = data[perm[start:start + self.batch_size]]  # (B, L)
                g = net()
                coords, centre = bounded_code(g.detach(), self.size)
                words = coords.double() @ g  # (K, L), differentiable in G
                u = torch.rand(xb.shape, generator=gen, dtype=torch.float64)
                cell = Lattice("q", g.detach()).closest_coordinates(u @ g.detach())
                d = (u - cell.double()) @ g  # dither uniform on the cell of G
                y = xb + d
                k = torch.cdist((y + centre).detach(), words.detach()).argmin(dim=1)  # stop-gradient
                loss = (words[k] - centre - d - xb).pow(2).sum(dim=1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        g = net().detach()
        cond = torch.linalg.cond(g)
        return g if bool(torch.isfinite(cond)) and float(cond) < 1e6 else g0


COMPRESSORS: dict[str, type[Compressor]] = {
    c.name: c for c in (NoneCompressor, UniformCompressor, QSGDCompressor, LatticeCompressor, OlalaCompressor)
}


def build_compressor(name: str, rate: float = 2.0, **kwargs) -> Compressor:
    """The compressor registered as ``name`` (``none``, ``uniform``, ``qsgd``, ``lattice``, ``olala``).

    Keyword arguments a compressor does not take are ignored (one config serves all of them).
    """
    if name not in COMPRESSORS:
        raise ValueError(f"unknown compressor '{name}'; known: {', '.join(COMPRESSORS)} "
                         f"(set model.compressor=...)")
    cls = COMPRESSORS[name]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(rate=rate, **{k: v for k, v in kwargs.items() if k in accepted})

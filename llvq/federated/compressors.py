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
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from llvq.lattices import Lattice, bounded_code, get_lattice
from llvq.quantizers import BoundedLatticeQuantizer, build

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
        stats: client-side diagnostics for logging (not sent, not counted).
    """

    kind: str
    numel: int
    indices: Tensor
    side: dict[str, Tensor] = field(default_factory=dict)
    bits: int = 0
    overloaded: int = 0
    blocks: int = 0
    stats: dict[str, float] = field(default_factory=dict)


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
    """No compression: the ``identity`` quantizer, fp32, ``32 P`` bits."""

    name = "none"

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
        values = _check_side(payload, "values", (payload.numel,)).float()
        return self.quantizer.decode(values.view(-1, 1)).reshape(-1)


class LatticeCompressor(Compressor):
    """Subtractive-dithered bounded lattice quantization (UVeQFed) of ``L``-dim blocks.

    Built from ``bounded_lattice`` with ``dim = L``; ``uniform`` is it on ``Z1``.

    Args:
        rate: ``R`` bits per coordinate; ``R * L`` must be whole.
        lattice: a lattice name (``A2``, ``D4``, ``E8``, ``Z1``, ...).
        overload: target overload probability of the scale fit (0 = none overloads);
            ``None``: the scale with the least squared error on the update.
    """

    name = "lattice"
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
        self.block = base.dim
        self.index_bits = self.quantizer.index_bits
        self.size = self.quantizer.codebook_size
        self.overload = None if overload is None else float(overload)

    def side_bits(self) -> int:
        return FLOAT_BITS * (1 + (self.block ** 2 if self.send_generator else 0))

    def _use(self, g: Tensor, seed: int) -> BoundedLatticeQuantizer:
        q = self.quantizer
        q.set_generator(g)
        q.seed = int(seed)
        return q

    def scale_for(self, x: Tensor, g: Tensor, seed: int, near: float | None = None,
                  steps: int = 24) -> float:
        """``zeta`` for blocks ``x: (m, L)`` with generator ``g`` and this seed's dither
        (``near``, ``steps``: see :meth:`BoundedLatticeQuantizer.fit_scale`)."""
        return self._use(g, seed).fit_scale(x, self.overload, steps, near)

    def error(self, x: Tensor, g: Tensor, zeta: float, seed: int) -> float:
        """Squared error of sending ``x`` with ``(g, zeta)`` and this seed's dither."""
        q = self._use(g, seed)
        q.scale.fill_(zeta)
        d = q.sample_dither((x.shape[0],))
        return float((q.decode_with(q.encode_blocks(x, d)[0], d) - x).pow(2).sum())

    def generator_and_scale(self, x: Tensor, seed: int) -> tuple[Tensor, float, dict[str, float]]:
        """``(G as sent, zeta, client-side statistics)``; fixed ``G`` here, learned by OLALa."""
        g = self.lattice.generator
        return g, self.scale_for(x, g, seed), {}

    def compress(self, h: Tensor, seed: int) -> Payload:
        x = _blocks(h, self.block)
        g, zeta, stats = self.generator_and_scale(x, seed)
        side = {"zeta": torch.tensor(zeta, dtype=torch.float32)}
        if self.send_generator:
            side["generator"] = g.float()
        q = self._use(side["generator"].double() if self.send_generator else g, seed)
        q.scale.fill_(float(side["zeta"]))  # encode with the side information as stored
        idx, over = q.encode_blocks(x)
        return Payload(self.name, h.numel(), idx.view(-1), side,
                       bits=self.index_bits * x.shape[0] + self.side_bits(),
                       overloaded=int(over.sum()), blocks=x.shape[0], stats=stats)

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
        q = self._use(g, seed)
        q.scale.fill_(float(zeta))
        d = q.sample_dither((m,)) if self.dither == "subtractive" else None
        x = q.decode_with(payload.indices.view(m, 1), d)  # (m, L)
        return x.reshape(-1)[: payload.numel].float()


class UniformCompressor(LatticeCompressor):
    """Scalar subtractive-dithered uniform quantization: the lattice compressor on ``Z``."""

    name = "uniform"

    def __init__(self, rate: float = 2.0, overload: float | None = 0.01) -> None:
        super().__init__(rate, "Z1", overload)


class QSGDCompressor(LatticeCompressor):
    """QSGD: ``2^R`` levels ``||h||_2 (-1 + 2k / (2^R - 1))`` with unbiased stochastic rounding.

    The bounded ``Z1`` code of ``2^R`` points at scale ``zeta = 2 ||h||_2 / (2^R - 1)`` with a
    non-subtractive dither: rounding ``x / zeta + d`` with ``d`` uniform on ``[-1/2, 1/2)``
    picks the upper level with probability equal to the distance from the lower one.
    ``R`` must be whole.
    """

    name = "qsgd"
    dither = "nonsubtractive"

    def __init__(self, rate: float = 2.0) -> None:
        if float(rate) != int(rate):
            raise ValueError(f"qsgd needs a whole model.rate, got {rate}")
        super().__init__(rate, "Z1", 0.0)
        self.levels = self.size

    def generator_and_scale(self, x: Tensor, seed: int) -> tuple[Tensor, float, dict[str, float]]:
        norm = float(x.norm())
        return self.lattice.generator, (2 * norm / (self.levels - 1) if norm > 0 else 1.0), {}


class GeneratorNet(nn.Module):
    """A fixed input ``s`` through a small MLP gives ``G = G0 expm(f_theta(s))`` (``f`` starts at 0).

    The matrix exponential keeps ``G`` invertible for every output. The scale of ``G`` is free
    while training, so the MSE can trade granular error against overload; the learned shape is
    then rescaled to ``|det G0|`` and ``zeta`` sets the scale.
    """

    def __init__(self, g0: Tensor, hidden: int = 16, in_dim: int = 4) -> None:
        super().__init__()
        n = g0.shape[0]
        self.register_buffer("g0", g0.double().clone())
        self.register_buffer("s", torch.ones(in_dim, dtype=torch.float64))
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, n * n)).double()
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self) -> Tensor:
        return self.g0 @ torch.linalg.matrix_exp(self.net(self.s).view_as(self.g0))

    def shape(self) -> Tensor:
        """The learned ``G`` rescaled to the volume of ``G0``, as stored (fp32 values, detached)."""
        g = self.forward().detach()
        ratio = self.g0.det().abs() / g.det().abs().clamp_min(1e-300)
        return (g * ratio ** (1.0 / g.shape[0])).float().double()


class OlalaCompressor(LatticeCompressor):
    """OLALa: a per-client, per-round generator learned online on the client's own update.

    Per round: ``zeta0`` is fitted for the starting lattice ``G0``; the network is trained by
    Adam on mini-batches of the update's blocks (in units of ``zeta0``) for the MSE of the
    dithered bounded quantization, ``||w_k(G) - c(G) - d(G) - x||^2`` with the codeword choice
    ``k`` a stop-gradient and the dither reparametrised as ``d = (u - Q(u G)) G``. Every
    ``refresh`` steps the code's membership is rebuilt for the current ``G``; every other time, and
    at the end, the candidate
    (its shape at the volume of ``G0``, as stored) is scored by what the server will see: the
    client's actual squared error with ``zeta`` fitted for the overload target and the real
    dither. The best candidate is sent, ``G0`` included (``stats["learned"]`` says which), so a
    round's online learning never makes the client's error worse than its starting lattice.

    Args:
        rate, lattice, overload: as :class:`LatticeCompressor`; ``lattice`` is ``G0``.
        steps: Adam steps of the generator network per round (0: always ``G0``).
        lr: learning rate of the generator network.
        batch_size: blocks per mini-batch.
        hidden: width of the generator network.
        refresh: steps between rebuilding the code (the current ``G`` is scored every other
            refresh and at the end).
        score_blocks: candidates are scored on at most this many blocks (a fixed random
            subset); the winner is checked against ``G0`` on all blocks.
    """

    name = "olala"
    send_generator = True

    def __init__(self, rate: float = 2.0, lattice: str = "A2", overload: float | None = 0.01,
                 steps: int = 100, lr: float = 0.003, batch_size: int = 512, hidden: int = 16,
                 refresh: int = 10, score_blocks: int = 4096) -> None:
        super().__init__(rate, lattice, overload)
        if steps < 0 or lr <= 0 or batch_size < 1 or refresh < 1:
            raise ValueError(f"OLALa needs model.olala_steps >= 0, model.olala_lr > 0, batch_size "
                             f">= 1 and refresh >= 1; got {steps}, {lr}, {batch_size}, {refresh}")
        self.steps, self.lr, self.batch_size = int(steps), float(lr), int(batch_size)
        self.hidden, self.refresh, self.score_blocks = int(hidden), int(refresh), int(score_blocks)

    def _score(self, x: Tensor, g: Tensor, seed: int, near: float | None = None,
               steps: int = 24) -> tuple[float, float]:
        """``(squared error, zeta)`` of sending ``x`` with the stored ``g`` at the overload target."""
        cond = torch.linalg.cond(g)
        if not bool(torch.isfinite(cond)) or float(cond) > 1e6:
            return math.inf, 1.0
        zeta = self.scale_for(x, g, seed, near, steps)
        return self.error(x, g, float(torch.tensor(zeta, dtype=torch.float32)), seed), zeta

    def learn_generator(self, x: Tensor, zeta0: float, seed: int) -> Tensor:
        """Train the generator network on blocks ``x / zeta0``; returns the best-scoring ``G``
        (``G0`` when no candidate beats it on the scoring subset)."""
        g0 = self.lattice.generator.float().double()
        data = x / zeta0
        gen = torch.Generator().manual_seed(int(seed) + 1)
        sub = x if x.shape[0] <= self.score_blocks else \
            x[torch.randperm(x.shape[0], generator=gen)[: self.score_blocks]]
        best = (self._score(sub, g0, seed, zeta0, 10)[0], g0)
        net = GeneratorNet(g0, self.hidden)
        with torch.no_grad():
            for p in net.net[0].parameters():
                p.uniform_(-0.5, 0.5, generator=gen)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        order = torch.randperm(data.shape[0], generator=gen)
        _, centre0 = bounded_code(g0, self.size)
        frac = centre0 @ torch.linalg.inv(g0)  # the code's centre in lattice coordinates
        pos = 0
        for step in range(self.steps + 1):
            if step % self.refresh == 0 or step == self.steps:
                if step > 0 and (step % (2 * self.refresh) == 0 or step == self.steps):
                    cand = net.shape()
                    err = self._score(sub, cand, seed, zeta0, 10)[0]
                    if err < best[0]:
                        best = (err, cand)
                if step == self.steps:
                    break
                # the code's membership for the current G (same centre, no search: cheap), and
                # unit-cell dither offsets u - Q(u G) for the next `refresh` steps in one decoding
                g_now = net().detach()
                coords, _ = bounded_code(g_now, self.size, centre_frac=frac)
                u = torch.rand(self.refresh, self.batch_size, g0.shape[0], generator=gen,
                               dtype=torch.float64)
                cells = u - Lattice("olala", g_now).closest_coordinates(u @ g_now).double()
            if pos + self.batch_size > data.shape[0]:
                order, pos = torch.randperm(data.shape[0], generator=gen), 0
            xb = data[order[pos:pos + self.batch_size]]  # (B, L)
            pos += self.batch_size
            g = net()
            words = coords.double() @ g - frac @ g  # (K, L) codewords relative to the centre
            d = cells[step % self.refresh, : xb.shape[0]] @ g  # dither uniform on the cell of G
            k = torch.cdist((xb + d).detach(), words.detach()).argmin(dim=1)  # stop-gradient
            loss = (words[k] - d - xb).pow(2).sum(dim=1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return best[1]

    def generator_and_scale(self, x: Tensor, seed: int) -> tuple[Tensor, float, dict[str, float]]:
        g0 = self.lattice.generator.float().double()  # as stored
        err0, zeta0 = self._score(x, g0, seed)
        if self.steps == 0 or x.shape[0] == 0 or float(x.abs().max()) == 0:
            return g0, zeta0, {"learned": 0.0}
        g = self.learn_generator(x, zeta0, seed)
        err, zeta = self._score(x, g, seed) if not torch.equal(g, g0) else (err0, zeta0)
        if not err < err0:
            return g0, zeta0, {"learned": 0.0, "gain_db": 0.0}
        return g, zeta, {"learned": 1.0, "gain_db": 10 * math.log10(err0 / err) if err > 0 else 0.0}


COMPRESSORS: dict[str, type[Compressor]] = {
    c.name: c for c in (NoneCompressor, UniformCompressor, QSGDCompressor, LatticeCompressor, OlalaCompressor)
}


def build_compressor(name: str, rate: float = 2.0, **kwargs) -> Compressor:
    """The compressor named ``name`` (``none``, ``uniform``, ``qsgd``, ``lattice``, ``olala``).

    Keyword arguments a compressor does not take are ignored (one config serves all of them).
    """
    if name not in COMPRESSORS:
        raise ValueError(f"unknown compressor '{name}'; known: {', '.join(COMPRESSORS)} "
                         f"(set model.compressor=...)")
    cls = COMPRESSORS[name]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(rate=rate, **{k: v for k, v in kwargs.items() if k in accepted})

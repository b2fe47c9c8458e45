"""OLALa (Lang et al. 2025, "Online Learned Adaptive Lattice codes"): a per-client, per-round lattice.

Per client and round a small network with a fixed input outputs ``G = G0 expm(f_theta(s))``;
it is trained online on the client's update with the MSE of the dithered bounded quantization
(the nearest codeword a stop-gradient), and the best-scoring candidate (``G0`` included) is
sent as fp32 side information beside ``zeta``. The encoding is :class:`LatticeCompressor`'s,
with the learned ``G`` passed per call to the shared ``bounded_lattice`` quantizer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from llvq.federated.compressors import COMPRESSORS, LatticeCompressor
from llvq.lattices import Lattice, bounded_code

__all__ = ["GeneratorNet", "OlalaCompressor"]


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


@COMPRESSORS.register("olala")
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

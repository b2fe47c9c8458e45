"""Grouped lattice quantizer with µ-law companding (GLVQ, arXiv 2510.20984).

Each of ``groups`` groups has its own generator ``G_g`` (``d x d``, rows = basis vectors, as
everywhere in llvq), its own compander ``F_g(x) = sgn(x) ln(1 + µ_g|x|) / ln(1 + µ_g)`` applied
to ``x / s_g`` and its own bit width ``b_g``. A vector ``x`` of group ``g`` is coded as

    k = clamp(floor(F_g(x / s_g) @ G_g^-1), -2^(b-1), 2^(b-1) - 1)        (Babai rounding)
    x_hat = s_g * F_g^-1((k + 1/2) @ G_g)

i.e. the points of the shifted lattice ``(Z^d + 1/2) G_g`` inside a box of ``2^b`` points per
axis, so ``b`` bits per coordinate. The half-integer shift makes the codebook symmetric (at
2 bits the levels are -1.5, -0.5, 0.5, 1.5 along each basis vector); the stored code is the
unsigned ``k + 2^(b-1)`` in ``[0, 2^b)``.

Shapes: ``z`` is ``(..., groups, m, d)``; with ``groups == 1`` any ``(..., d)`` works (the
per-group parameters broadcast). The LLM post-training quantizer (:mod:`llvq.llm`) drives this
module with every weight group of a linear layer at once; as a registered bottleneck
(``model/quantizer=glvq``) it is a bounded learnable lattice with a learnable compander.

The summary of the paper does not fix the kurtosis -> µ map; llvq uses
``µ0 = clamp(10 (κ/3)^2, 10, 255)`` (a Gaussian group, κ = 3, starts at µ = 10; heavier tails
start with stronger companding), with µ learned in ``[10, 255]`` through a sigmoid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llvq.quantizers.base import Quantizer, QuantizerOutput
from llvq.quantizers.registry import register

__all__ = ["MU_MAX", "MU_MIN", "GroupedLatticeQuantizer", "compand", "expand", "gaussian_step"]

MU_MIN, MU_MAX = 10.0, 255.0

# Step of the MSE-optimal uniform quantizer with 2^b levels for a unit Gaussian (Max 1960).
_GAUSS_STEP = {1: 1.596, 2: 0.9957, 3: 0.5860, 4: 0.3352, 5: 0.1881, 6: 0.1041, 7: 0.0569,
               8: 0.0308}


def gaussian_step(bits: int) -> float:
    """Step of the MSE-optimal ``2^bits``-level uniform quantizer for a unit-variance Gaussian."""
    if bits in _GAUSS_STEP:
        return _GAUSS_STEP[bits]
    return 4.0 * math.sqrt(3.0) * 2.0 ** -bits * math.sqrt(bits / 4.0)  # ~ fine-rate asymptote


def compand(x: Tensor, mu: Tensor) -> Tensor:
    """µ-law ``sgn(x) ln(1 + µ|x|) / ln(1 + µ)``."""
    return torch.sign(x) * torch.log1p(mu * x.abs()) / torch.log1p(mu)


def expand(y: Tensor, mu: Tensor) -> Tensor:
    """Inverse µ-law ``sgn(y) ((1 + µ)^|y| - 1) / µ``."""
    return torch.sign(y) * torch.expm1(y.abs() * torch.log1p(mu)) / mu


def _as_group_tensor(value: float | list | Tensor, groups: int, name: str,
                     dtype: torch.dtype) -> Tensor:
    t = torch.as_tensor(value, dtype=dtype).flatten()
    if t.numel() == 1:
        t = t.expand(groups).clone()
    if t.numel() != groups:
        raise ValueError(f"quantizer 'glvq': `{name}` needs 1 or groups={groups} values, "
                         f"got {t.numel()}")
    return t


@register("glvq")
class GroupedLatticeQuantizer(Quantizer):
    """Per-group learned lattice + µ-law compander + bit width (see the module docstring).

    Args:
        dim: lattice dimension ``d`` (8 in the paper; 16 and 32 also used).
        groups: number of groups, each with its own ``G``, ``µ``, scale and bit width.
        bits: bits per coordinate, one value or one per group (integers >= 1).
        compand: apply the µ-law compander: one bool, or one per group (False: ``F`` is the
            identity, as in the paper's ablation and for groups whose weights are close to
            Gaussian, where µ >= 10 companding costs accuracy).
        mu: initial µ (one value or one per group), in ``[10, 255]``.
        scale: initial input scale ``s_g`` (inputs are divided by it before companding).
        learnable: learn ``G`` and ``µ`` through :attr:`QuantizerOutput.loss`.
        beta: weight of the reconstruction MSE in the returned loss.
    """

    vector_codes = True

    def __init__(self, dim: int = 8, groups: int = 1, bits: int | list[int] | Tensor = 2,
                 compand: bool | list[bool] | Tensor = True, mu: float | list[float] | Tensor = 50.0,
                 scale: float | list[float] | Tensor = 1.0, learnable: bool = True,
                 beta: float = 1.0) -> None:
        super().__init__(dim)
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"quantizer 'glvq': `groups` must be a positive integer, got {groups!r}")
        b = _as_group_tensor(bits, groups, "bits", torch.float64)
        if bool((b < 1).any()) or bool((b != b.round()).any()) or bool((b > 16).any()):
            raise ValueError(f"quantizer 'glvq': `bits` must be integers in [1, 16], got "
                             f"{b.tolist()[:8]}")
        m = _as_group_tensor(mu, groups, "mu", torch.float32)
        if bool((m < MU_MIN).any()) or bool((m > MU_MAX).any()):
            raise ValueError(f"quantizer 'glvq': `mu` must lie in [{MU_MIN:g}, {MU_MAX:g}]")
        s = _as_group_tensor(scale, groups, "scale", torch.float32)
        if bool((s <= 0).any()):
            raise ValueError("quantizer 'glvq': `scale` must be > 0")
        self.groups = groups
        mask = _as_group_tensor(compand, groups, "compand", torch.bool)
        self.register_buffer("compand_mask", mask)
        self.use_compand = bool(mask.any())
        self.beta = float(beta)
        self.register_buffer("bits", b.to(torch.int64))
        self.register_buffer("scale", s)
        g0 = torch.eye(dim).expand(groups, dim, dim) * torch.tensor(
            [gaussian_step(int(v)) for v in b.tolist()]).view(groups, 1, 1) / 3.0
        self.generator = nn.Parameter(g0.clone(), requires_grad=learnable)
        self.mu_logit = nn.Parameter(self._mu_to_logit(m),
                                     requires_grad=learnable and self.use_compand)

    # -- parameters ----------------------------------------------------------------------------
    @staticmethod
    def _mu_to_logit(mu: Tensor) -> Tensor:
        p = ((mu - MU_MIN) / (MU_MAX - MU_MIN)).clamp(1e-4, 1 - 1e-4)
        return torch.log(p) - torch.log1p(-p)

    @property
    def mu(self) -> Tensor:
        """µ per group, ``(groups,)`` in ``[10, 255]``."""
        return MU_MIN + (MU_MAX - MU_MIN) * torch.sigmoid(self.mu_logit)

    @torch.no_grad()
    def set_state(self, generator: Tensor | None = None, mu: Tensor | None = None,
                  scale: Tensor | None = None, bits: Tensor | None = None,
                  compand: Tensor | None = None) -> None:
        """Overwrite per-group parameters (shapes ``(groups, d, d)`` / ``(groups,)``)."""
        if compand is not None:
            self.compand_mask.copy_(compand.to(self.compand_mask))
            self.use_compand = bool(self.compand_mask.any())
        if generator is not None:
            self.generator.copy_(generator.to(self.generator))
        if mu is not None:
            self.mu_logit.copy_(self._mu_to_logit(mu.to(self.mu_logit).clamp(MU_MIN, MU_MAX)))
        if scale is not None:
            self.scale.copy_(scale.to(self.scale))
        if bits is not None:
            self.bits.copy_(bits.to(self.bits))

    def _view(self, t: Tensor) -> Tensor:
        """Per-group ``(groups,)`` tensor shaped to broadcast against ``(..., groups, m, d)``."""
        return t.view(self.groups, 1, 1)

    # -- the code -------------------------------------------------------------------------------
    def forward_transform(self, x: Tensor) -> Tensor:
        """``F(x / s)`` per group."""
        y = x / self._view(self.scale)
        if not self.use_compand:
            return y
        return torch.where(self._view(self.compand_mask), compand(y, self._view(self.mu)), y)

    def inverse_transform(self, y: Tensor, mu: Tensor | None = None) -> Tensor:
        """``s F^-1(y)`` per group (``mu``: an explicit ``(groups,)`` µ, e.g. a free variable)."""
        if self.use_compand:
            e = expand(y, self._view(self.mu if mu is None else mu))
            y = torch.where(self._view(self.compand_mask), e, y)
        return y * self._view(self.scale)

    def _half_levels(self) -> Tensor:
        return self._view(2.0 ** (self.bits - 1).to(self.generator.dtype))

    def lattice_codes(self, y: Tensor) -> Tensor:
        """Signed Babai codes ``k`` (float, integral) of companded vectors ``y``, clamped."""
        half = self._half_levels()
        u = y @ torch.linalg.inv(self.generator.detach())
        return torch.minimum(torch.maximum(torch.floor(u), -half), half - 1)

    def points(self, k: Tensor) -> Tensor:
        """Companded reconstructions ``(k + 1/2) @ G`` (differentiable in ``G``)."""
        return (k + 0.5) @ self.generator

    def reconstruct(self, k: Tensor) -> Tensor:
        """``s F^-1((k + 1/2) G)`` from signed codes; differentiable in ``G`` and ``µ``."""
        return self.inverse_transform(self.points(k))

    def overload(self, y: Tensor) -> Tensor:
        """Fraction of coordinates whose Babai code had to be clamped."""
        half = self._half_levels()
        u = torch.floor(y @ torch.linalg.inv(self.generator.detach()))
        return ((u < -half) | (u > half - 1)).float().mean()

    # -- contract -------------------------------------------------------------------------------
    def quantize(self, z: Tensor) -> QuantizerOutput:
        with torch.no_grad():
            y = self.forward_transform(z)
            k = self.lattice_codes(y)
            over = self.overload(y)
        x_hat = self.reconstruct(k)
        loss = self.beta * F.mse_loss(x_hat, z.detach())
        z_q = z + (x_hat - z).detach()
        codes = (k + self._half_levels()).to(torch.int64)
        metrics = {"quant/overload": over.detach(), "quant/mu": self.mu.mean().detach()}
        return QuantizerOutput(z_q=z_q, codes=codes, loss=loss, metrics=metrics)

    def encode_impl(self, z: Tensor) -> Tensor:
        k = self.lattice_codes(self.forward_transform(z))
        return (k + self._half_levels()).to(torch.int64)

    def decode(self, codes: Tensor) -> Tensor:
        k = codes.to(self.generator.dtype) - self._half_levels()
        return self.reconstruct(k)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, groups={self.groups}, bits={self.bits.tolist()[:4]}"
                f"{'...' if self.groups > 4 else ''}, compand={int(self.compand_mask.sum())}/{self.groups}")

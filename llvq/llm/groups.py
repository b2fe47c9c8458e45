"""One linear layer as a GLVQ problem: grouping, side information, initialisation, decoding.

A weight ``W`` (``out x in``) is split into ``M = in / group_size`` groups of ``group_size``
input columns. Group ``g`` (``out x group_size``) is reshaped into ``out * group_size / d``
vectors of ``d`` consecutive weights of one row, and coded by the ``glvq`` quantizer
(:class:`llvq.quantizers.glvq.GroupedLatticeQuantizer`) with its own ``G_g``, ``µ_g``, scale
and bit width, passed per call as a :class:`llvq.quantizers.glvq.GLVQState`.

The objective is the layer's output error on calibration inputs ``X``:
``||(W - W_hat) X||^2 = tr(D H D^T)`` with ``H = X X^T``; :class:`LayerProblem` keeps the
diagonal blocks ``H_g`` so the error is a sum over groups. The optimisation is in
:mod:`llvq.llm.glvq`, the bit allocation in :mod:`llvq.llm.allocation`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from llvq.llm.incoherence import unrotate
from llvq.quantizers.glvq import (
    MU_MAX,
    MU_MIN,
    GLVQState,
    GroupedLatticeQuantizer,
    logit_to_mu,
    mu_to_logit,
)

if TYPE_CHECKING:  # settings imports the baselines, which import this module
    from llvq.llm.settings import GLVQSettings

__all__ = [
    "SIDE_BITS",
    "SIDE_DTYPE",
    "LayerProblem",
    "LayerResult",
    "check_shapes",
    "dequantize",
    "diagonal_blocks",
    "group_hessian_error",
    "group_weight",
    "model_weight",
    "relative_error",
    "round_side",
    "side_bits",
    "ungroup_weight",
]

SIDE_DTYPE = torch.float16
SIDE_BITS = 16


@dataclass
class LayerResult:
    """What quantising one linear layer produced (all side information already float16-exact).

    Attributes:
        codes: ``(M, m, d)`` unsigned codes in ``[0, 2^b_g)`` (int16).
        generator: ``(M, d, d)`` float16, rows = basis vectors.
        mu: ``(M,)`` float16 (stored only for the groups that compand).
        scale: ``(M,)`` float16 input scale per group.
        row_scale: ``(out,)`` float16 or ``None``.
        bits: ``(M,)`` int64 bit width per group.
        weight: the dequantized weight ``(out, in)`` (float32).
        error: relative output error after quantization ``tr(D H D^T) / tr(W H W^T)`` (full H).
        error_init: the same for the initial quantizer (no gradient step, no error feedback).
        outer_steps: alternations run (largest over groups).
        compand: ``(M,)`` bool, the groups that use the µ-law compander.
        code: ``"box"`` or ``"e8p"``, the code of every group (``model.glvq.code``; E8P codes
            are stored as 8 base-4 digits per vector, see :mod:`llvq.quantizers.glvq`).
        rotation_seed: with incoherence processing, the seed of the layer's transforms
            (:mod:`llvq.llm.incoherence`): ``codes`` ... ``weight`` describe the *rotated*
            weight, and :func:`model_weight` gives the layer's own; ``None`` without.
        extra: scratch values passed between internal steps (empty in returned results).
    """

    codes: Tensor
    generator: Tensor
    mu: Tensor
    scale: Tensor
    row_scale: Tensor | None
    bits: Tensor
    weight: Tensor
    error: float
    error_init: float
    outer_steps: int
    compand: Tensor = field(default_factory=lambda: torch.ones(0, dtype=torch.bool))
    rotation_seed: int | None = None
    code: str = "box"
    extra: dict = field(default_factory=dict)


def model_weight(res: LayerResult) -> Tensor:
    """The dequantized weight in the layer's own coordinates (undoes incoherence processing)."""
    return res.weight if res.rotation_seed is None else unrotate(res.weight, res.rotation_seed)


def check_shapes(out_features: int, in_features: int, group_size: int, lattice_dim: int,
                 name: str = "layer") -> int:
    """Number of groups; one clear error when ``group_size`` or ``lattice_dim`` do not fit."""
    if group_size < 1 or in_features % group_size:
        divisors = [k for k in (32, 64, 96, 128, 192, 256) if in_features % k == 0]
        raise ValueError(
            f"model.glvq.group_size={group_size} does not divide the input width {in_features} "
            f"of '{name}'; choose a divisor of every layer's input width (e.g. {divisors})")
    if lattice_dim < 1 or group_size % lattice_dim:
        raise ValueError(f"model.glvq.lattice_dim={lattice_dim} must divide "
                         f"model.glvq.group_size={group_size}")
    return in_features // group_size


def group_weight(w: Tensor, group_size: int, d: int) -> Tensor:
    """``(out, in) -> (M, out * group_size / d, d)``: vectors of ``d`` consecutive columns."""
    out, inp = w.shape
    m = inp // group_size
    return w.reshape(out, m, group_size).transpose(0, 1).reshape(m, out * group_size // d, d)


def ungroup_weight(v: Tensor, out: int, group_size: int) -> Tensor:
    """Inverse of :func:`group_weight`."""
    m = v.shape[0]
    return v.reshape(m, out, group_size).transpose(0, 1).reshape(out, m * group_size)


def diagonal_blocks(h: Tensor, group_size: int) -> Tensor:
    """``(in, in) -> (M, group_size, group_size)``: the diagonal blocks of ``H``."""
    m = h.shape[0] // group_size
    idx = torch.arange(m, device=h.device)
    return h.reshape(m, group_size, m, group_size)[idx, :, idx, :]


def group_hessian_error(delta: Tensor, h_blocks: Tensor, group_size: int) -> Tensor:
    """Per-group output error ``tr(D_g H_g D_g^T)``, ``(M,)``, for ``delta`` of shape (out, in)."""
    out = delta.shape[0]
    m = h_blocks.shape[0]
    d = delta.reshape(out, m, group_size).transpose(0, 1)  # (M, out, gs)
    return ((d @ h_blocks) * d).sum(dim=(1, 2))


def inverse_cholesky(h: Tensor) -> Tensor:
    """The upper Cholesky factor ``U`` of ``h^-1`` (``h`` already damped; batched too), as
    GPTQ's and BlockLDLQ's error feedback use it."""
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def relative_error(w: Tensor, w_hat: Tensor, h: Tensor) -> float:
    """``tr(D H D^T) / tr(W H W^T)`` with ``D = W - W_hat``."""
    d = w - w_hat
    return float(torch.trace(d @ h @ d.T)) / max(float(torch.trace(w @ h @ w.T)), 1e-20)


def side_bits(out_features: int, groups: int, d: int, compand_groups: int, row_scale: bool) -> int:
    """Bits of side information of one layer as stored.

    Per group: float16 ``G`` (``d^2``) and scale, one byte for the bit width and the compander
    flag; float16 ``µ`` for each group that compands; float16 row scales when enabled.
    """
    per_group = (d * d + 1) * SIDE_BITS + 8
    return (groups * per_group + compand_groups * SIDE_BITS
            + (out_features * SIDE_BITS if row_scale else 0))


def held_mu(mu: Tensor) -> Tensor:
    """µ (float32) as the quantizer holds it: clamped to ``[MU_MIN, MU_MAX]`` and passed through
    its logit parametrisation."""
    return logit_to_mu(mu_to_logit(mu.float().clamp(MU_MIN, MU_MAX)))


def round_side(generator: Tensor, mu: Tensor) -> tuple[Tensor, Tensor]:
    """``G`` and ``µ`` as they are stored (float16), back in float32 for coding.

    µ goes through its logit parametrisation (as the quantizer holds it), so the µ that codes
    the final weights is the one :func:`dequantize` recovers from the stored float16 value.
    """
    g = generator.to(SIDE_DTYPE).float()
    return g, held_mu(mu.to(SIDE_DTYPE))


def dequantize(codes: Tensor, generator: Tensor, mu: Tensor, scale: Tensor,
               row_scale: Tensor | None, bits: Tensor, compand: Tensor, out_features: int,
               group_size: int, code: str = "box") -> Tensor:
    """The weight ``(out, in)`` from stored codes and side information (float32)."""
    m, _, d = codes.shape
    q = GroupedLatticeQuantizer(d, groups=m, learnable=False, code=code)
    with torch.no_grad():
        g, mu_eff = round_side(generator.float(), held_mu(mu))
        state = GLVQState(generator=g, mu=mu_eff, scale=scale.float().flatten(),
                          bits=torch.as_tensor(bits).to(torch.int64).flatten(),
                          compand=torch.as_tensor(compand, dtype=torch.bool).flatten())
        x_hat = q.decode(codes.to(torch.int64), state)
        w = ungroup_weight(x_hat, out_features, group_size)
        return w * row_scale.float()[:, None] if row_scale is not None else w


def row_scales(w: Tensor, enabled: bool) -> Tensor | None:
    """Per-row RMS of ``w`` in its stored precision (float16), or ``None`` when disabled."""
    if not enabled:
        return None
    r = w.pow(2).mean(dim=1).sqrt().clamp_min(1e-8)
    return r.to(SIDE_DTYPE).to(w.dtype).clamp_min(torch.finfo(SIDE_DTYPE).tiny)


def _kurtosis_mu(x: Tensor) -> Tensor:
    """µ0 per group from the kurtosis κ of its (scaled) weights: clamp(10 (κ/3)^2, 10, 255)."""
    v = x.flatten(1)
    m2 = v.pow(2).mean(1).clamp_min(1e-20)
    kurt = v.pow(4).mean(1) / m2.pow(2)
    return (10.0 * (kurt / 3.0).pow(2)).clamp(MU_MIN, MU_MAX)


class LayerProblem:
    """The batched per-group problem of one layer (shared by init, allocation and optimisation).

    Args:
        w: ``(out, in)`` weight.
        h: ``(in, in)`` input second moment (its diagonal blocks are kept).
        settings: the per-layer settings.
        name: the layer's name, for error messages.
        row_scale: ``"auto"`` (from ``w`` when ``settings.row_scale``), or given row scales.
    """

    def __init__(self, w: Tensor, h: Tensor, settings: GLVQSettings, name: str,
                 row_scale: Tensor | None | str = "auto") -> None:
        s = settings
        self.out, self.inp = w.shape
        self.m = check_shapes(self.out, self.inp, s.group_size, s.lattice_dim, name)
        self.s = s
        self.w = w.float()
        self.h_blocks = diagonal_blocks(h.float(), s.group_size)
        self.row_scale = row_scales(self.w, s.row_scale) if isinstance(row_scale, str) else row_scale
        wn = self.w / self.row_scale[:, None] if self.row_scale is not None else self.w
        self.x = group_weight(wn, s.group_size, s.lattice_dim)  # (M, n, d)
        self.scale = self.x.abs().amax(dim=(1, 2)).clamp_min(1e-8).to(SIDE_DTYPE).float()
        mu0 = (_kurtosis_mu(self.x / self.scale.view(-1, 1, 1)) if s.compand
               else torch.full((self.m,), MU_MIN))
        self.mu_logit0 = mu_to_logit(mu0.float())  # µ is held (and learned) as a logit
        self.ref = group_hessian_error(self.w, self.h_blocks, s.group_size).clamp_min(1e-20)
        self.q = GroupedLatticeQuantizer(s.lattice_dim, groups=self.m, learnable=False,
                                         code=s.code)
        self._feedback: list[Tensor] | None = None  # vector feedback matrices, on first use

    def weight(self, x_hat: Tensor) -> Tensor:
        w = ungroup_weight(x_hat, self.out, self.s.group_size)
        return w * self.row_scale[:, None] if self.row_scale is not None else w

    def errors(self, w_hat: Tensor) -> Tensor:
        """Relative per-group output error, ``(M,)``."""
        return group_hessian_error(self.w - w_hat, self.h_blocks, self.s.group_size) / self.ref

    def state(self, bits: Tensor, compand: bool | Tensor) -> GLVQState:
        """Initial per-group state: identity generator (set by :meth:`init_state`), µ0, scales."""
        mask = torch.as_tensor(compand, dtype=torch.bool).flatten()
        if mask.numel() == 1:
            mask = mask.expand(self.m).clone()
        d = self.s.lattice_dim
        return GLVQState(generator=torch.eye(d).expand(self.m, d, d).clone(),
                         mu=logit_to_mu(self.mu_logit0), scale=self.scale,
                         bits=torch.as_tensor(bits).to(torch.int64).flatten(), compand=mask)

    def codes(self, state: GLVQState, y: Tensor | None = None) -> Tensor:
        """The codes of ``self.x`` under ``state`` (``y``: its companded vectors if known).

        Each vector on its own (Babai rounding / nearest E8P point), or with
        ``settings.vector_feedback`` one position of ``d`` columns after another inside each
        group, the error of each folded into the group's columns not yet coded through the
        group's Hessian (BlockLDLQ inside the group, batched over groups and rows); groups
        that compand are coded vector by vector.
        """
        q = self.q
        y = q.forward_transform(self.x, state) if y is None else y
        if not self.s.vector_feedback:
            return q.lattice_codes(y, state)
        return self._feedback_codes(y, state)

    def _feedback_codes(self, y: Tensor, state: GLVQState) -> Tensor:
        q, d, gs = self.q, self.s.lattice_dim, self.s.group_size
        if self._feedback is None:  # per position: U_cc^-1 U_c,rest, U = chol(H_g^-1) (damped)
            hb = self.h_blocks.double()
            mean = hb.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12).view(-1, 1, 1)
            u = inverse_cholesky(hb + max(self.s.damp, 1e-6) * mean
                                 * torch.eye(gs, dtype=torch.float64)).float()
            eye = torch.eye(d)
            self._feedback = [
                torch.linalg.solve_triangular(u[:, j:j + d, j:j + d], eye, upper=True)
                @ u[:, j:j + d, j + d:] for j in range(0, gs - d, d)]
        m = y.shape[0]
        work = y.reshape(m, self.out, gs).clone()
        keep = (~state.compand).to(y.dtype).view(-1, 1, 1)  # no feedback where a group compands
        codes = torch.empty_like(work)
        for j in range(0, gs, d):
            c = slice(j, j + d)
            k = q.lattice_codes(work[:, :, c], state)
            codes[:, :, c] = k
            if j + d < gs:
                err = (work[:, :, c] - q.points(k, state)) * keep
                work[:, :, j + d:] -= err @ self._feedback[j // d]
        return codes.reshape(y.shape)

    def reconstruct_weight(self, state: GLVQState, y: Tensor | None = None) -> Tensor:
        """The weight the state codes ``self.x`` to (``y``: its companded vectors if known)."""
        return self.weight(self.q.reconstruct(self.codes(state, y), state))

    @torch.no_grad()
    def init_state(self, bits: Tensor) -> tuple[GLVQState, Tensor]:
        """The initial state (per group: compander or not, whichever is better) and its
        relative per-group errors."""
        st = self.state(bits, compand=False)
        st = st.replace(generator=self.init_generator(st))
        err = self.errors(self.reconstruct_weight(st))
        if not self.s.compand:
            return st, err
        stc = self.state(bits, compand=True)
        stc = stc.replace(generator=self.init_generator(stc))
        err_c = self.errors(self.reconstruct_weight(stc))
        use = err_c < err
        g = torch.where(use.view(-1, 1, 1), stc.generator, st.generator)
        return stc.replace(generator=g, compand=use), torch.where(use, err_c, err)

    @torch.no_grad()
    def init_generator(self, state: GLVQState) -> Tensor:
        """``G0 = c * chol(cov)^T`` with ``c`` the best of ``init_scales`` x the Gaussian step."""
        y = self.q.forward_transform(self.x, state)
        d = y.shape[-1]
        cov = y.transpose(1, 2) @ y / y.shape[1]
        cov = cov + 1e-6 * cov.diagonal(dim1=1, dim2=2).mean(1).view(-1, 1, 1) * torch.eye(d)
        chol = torch.linalg.cholesky(cov.double()).float().transpose(1, 2)  # rows = basis
        steps = self.q.steps(state.bits).view(-1, 1, 1)
        best_err = torch.full((self.m,), math.inf)
        best = chol * steps
        for c in self.s.init_scales:
            g = chol * steps * c
            err = self.errors(self.reconstruct_weight(state.replace(generator=g), y))
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best[better] = g[better]
        return best

    @torch.no_grad()
    def init_errors(self, bits: Tensor) -> Tensor:
        """Relative per-group error of the initial quantizer (no optimisation) at ``bits``."""
        return self.init_state(bits)[1]

    @torch.no_grad()
    def initial_weight(self, bits: Tensor) -> Tensor:
        """The weight the initial quantizer (no optimisation, no feedback) gives."""
        return self.reconstruct_weight(self.init_state(bits)[0])

"""GLVQ for one linear layer: grouping, initialisation, alternating optimisation, bit allocation.

A weight ``W`` (``out x in``) is split into ``M = in / group_size`` groups of ``group_size``
input columns. Group ``g`` (``out x group_size``) is reshaped into ``out * group_size / d``
vectors of ``d`` consecutive weights of one row, and coded by the ``glvq`` quantizer
(:class:`llvq.quantizers.glvq.GroupedLatticeQuantizer`) with its own ``G_g``, ``µ_g``, scale
and bit width.

Objective. The layer's output error on calibration inputs ``X`` is
``||(W - W_hat) X||^2 = tr(D H D^T)`` with ``H = X X^T``. llvq keeps the diagonal blocks
``H_g`` of ``H`` (cross-group terms are dropped, as the groups are coded independently), so
the error is a sum over groups and all groups of a layer are optimised in one batched problem.

Alternating optimisation (paper, Sec. 3): codes by Babai rounding with ``G`` and ``µ`` fixed;
then ``inner_steps`` Adam steps on ``G`` (as ``G0 (I + A)``) and ``µ`` with the codes fixed,
minimising the relative output error plus ``reg * ||A||_F^2`` (a Frobenius penalty toward the
initial generator); per group, stop when the relative improvement of the error after
re-rounding falls below ``tol``; the best state seen is kept. Side information is rounded to
float16 before the final codes are computed, so the stored model is exactly the one measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from llvq.quantizers.glvq import MU_MAX, MU_MIN, GroupedLatticeQuantizer, gaussian_step

__all__ = [
    "GLVQSettings",
    "LayerResult",
    "allocate_bits",
    "dequantize",
    "group_hessian_error",
    "group_weight",
    "quantize_layer",
    "rtn_quantize",
    "side_bits",
    "ungroup_weight",
]

SIDE_DTYPE = torch.float16
SIDE_BITS = 16


@dataclass
class GLVQSettings:
    """Settings of the per-layer optimisation (the ``model.*`` options of ``model=llm_ptq``).

    Attributes:
        group_size: input columns per group; must divide every layer's input width.
        lattice_dim: ``d``, the lattice dimension (8, 16 or 32); must divide ``group_size``.
        compand: allow a µ-law compander per group (False: the paper's "no companding"
            ablation). Each group keeps the compander only if it lowers the group's error at
            initialisation (a flag per group in the side information): the summary bounds µ to
            [10, 255], and for near-Gaussian groups any such µ is worse than no companding.
        row_scale: divide each output row by its RMS (stored in float16, ``16 / in`` bits per
            weight) before grouping; not in the paper's summary, on by default (see docs/llm.md).
        max_outer: most alternations (re-rounding of the codes).
        inner_steps: Adam steps on ``G`` and ``µ`` per alternation.
        lr: Adam step size for ``A`` (``G = G0 (I + A)``) and the µ logit.
        reg: weight of the Frobenius penalty ``||A||_F^2`` toward the initial generator.
        tol: per-group stopping tolerance on the relative improvement of the output error.
        init_scales: multiples of the Gaussian-optimal step tried at initialisation.
        error_feedback: quantize the groups of a layer left to right and fold each group's
            error into the columns not yet quantized (the optimal-brain-surgeon update GPTQ
            uses, here per group), each group's objective being its Schur-complement Hessian;
            so the cross-group terms of ``H`` count. False: all groups at once with the
            diagonal blocks of ``H`` (faster; the groups of a layer can then be shared out
            across DDP ranks).
        damp: ``H + damp * mean(diag H) * I`` before inverting (error feedback only).
    """

    group_size: int = 128
    lattice_dim: int = 8
    compand: bool = True
    row_scale: bool = True
    max_outer: int = 6
    inner_steps: int = 5
    lr: float = 0.01
    reg: float = 1e-3
    tol: float = 1e-3
    init_scales: tuple[float, ...] = (0.7, 0.85, 1.0, 1.2)
    error_feedback: bool = True
    damp: float = 0.01


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
    extra: dict = field(default_factory=dict)


def check_shapes(out_features: int, in_features: int, group_size: int, lattice_dim: int,
                 name: str = "layer") -> int:
    """Number of groups; one clear error when ``group_size`` or ``lattice_dim`` do not fit."""
    if group_size < 1 or in_features % group_size:
        divisors = [k for k in (32, 64, 96, 128, 192, 256) if in_features % k == 0]
        raise ValueError(
            f"model.group_size={group_size} does not divide the input width {in_features} of "
            f"'{name}'; choose a divisor of every layer's input width (e.g. {divisors})")
    if lattice_dim < 1 or group_size % lattice_dim:
        raise ValueError(f"model.lattice_dim={lattice_dim} must divide model.group_size={group_size}")
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


def side_bits(out_features: int, groups: int, d: int, compand_groups: int, row_scale: bool) -> int:
    """Bits of side information of one layer as stored.

    Per group: float16 ``G`` (``d^2``) and scale, one byte for the bit width and the compander
    flag; float16 ``µ`` for each group that compands; float16 row scales when enabled.
    """
    per_group = (d * d + 1) * SIDE_BITS + 8
    return (groups * per_group + compand_groups * SIDE_BITS
            + (out_features * SIDE_BITS if row_scale else 0))


def _row_scale(w: Tensor, enabled: bool) -> Tensor | None:
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


class _LayerProblem:
    """The batched per-group problem of one layer (shared by init, allocation and optimisation)."""

    def __init__(self, w: Tensor, h: Tensor, settings: GLVQSettings, name: str,
                 row_scale: Tensor | None | str = "auto") -> None:
        s = settings
        self.out, self.inp = w.shape
        self.m = check_shapes(self.out, self.inp, s.group_size, s.lattice_dim, name)
        self.s = s
        self.w = w.float()
        self.h_blocks = diagonal_blocks(h.float(), s.group_size)
        self.row_scale = _row_scale(self.w, s.row_scale) if isinstance(row_scale, str) else row_scale
        wn = self.w / self.row_scale[:, None] if self.row_scale is not None else self.w
        self.x = group_weight(wn, s.group_size, s.lattice_dim)  # (M, n, d)
        self.scale = self.x.abs().amax(dim=(1, 2)).clamp_min(1e-8).to(SIDE_DTYPE).float()
        self.mu0 = (_kurtosis_mu(self.x / self.scale.view(-1, 1, 1)) if s.compand
                    else torch.full((self.m,), MU_MIN))
        self.ref = group_hessian_error(self.w, self.h_blocks, s.group_size).clamp_min(1e-20)

    def weight(self, x_hat: Tensor) -> Tensor:
        w = ungroup_weight(x_hat, self.out, self.s.group_size)
        return w * self.row_scale[:, None] if self.row_scale is not None else w

    def errors(self, w_hat: Tensor) -> Tensor:
        """Relative per-group output error, ``(M,)``."""
        return group_hessian_error(self.w - w_hat, self.h_blocks, self.s.group_size) / self.ref

    def quantizer(self, bits: Tensor, compand: bool | Tensor | None = None) -> GroupedLatticeQuantizer:
        c = self.s.compand if compand is None else compand
        q = GroupedLatticeQuantizer(self.s.lattice_dim, groups=self.m, bits=bits,
                                    compand=c, mu=self.mu0, scale=self.scale)
        return q.to(self.w.device)

    @torch.no_grad()
    def init_quantizer(self, bits: Tensor) -> tuple[GroupedLatticeQuantizer, Tensor]:
        """The initial quantizer (per group: compander or not, whichever is better) and its
        relative per-group errors."""
        q = self.quantizer(bits, compand=False)
        q.set_state(generator=self.init_generator(q))
        err = self.errors(self.weight(q.reconstruct(q.lattice_codes(q.forward_transform(self.x)))))
        if not self.s.compand:
            return q, err
        qc = self.quantizer(bits, compand=True)
        qc.set_state(generator=self.init_generator(qc))
        err_c = self.errors(self.weight(qc.reconstruct(qc.lattice_codes(qc.forward_transform(self.x)))))
        use = err_c < err
        g = torch.where(use.view(-1, 1, 1), qc.generator, q.generator)
        qc.set_state(generator=g, compand=use)
        return qc, torch.where(use, err_c, err)

    @torch.no_grad()
    def init_generator(self, q: GroupedLatticeQuantizer) -> Tensor:
        """``G0 = c * chol(cov)^T`` with ``c`` the best of ``init_scales`` x the Gaussian step."""
        y = q.forward_transform(self.x)
        d = y.shape[-1]
        cov = y.transpose(1, 2) @ y / y.shape[1]
        cov = cov + 1e-6 * cov.diagonal(dim1=1, dim2=2).mean(1).view(-1, 1, 1) * torch.eye(d)
        chol = torch.linalg.cholesky(cov.double()).float().transpose(1, 2)  # rows = basis
        steps = torch.tensor([gaussian_step(int(b)) for b in q.bits.tolist()]).view(-1, 1, 1)
        best_err = torch.full((self.m,), math.inf)
        best = chol * steps
        for c in self.s.init_scales:
            g = chol * steps * c
            q.set_state(generator=g)
            err = self.errors(self.weight(q.reconstruct(q.lattice_codes(y))))
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best[better] = g[better]
        return best

    @torch.no_grad()
    def init_errors(self, bits: Tensor) -> Tensor:
        """Relative per-group error of the initial quantizer (no optimisation) at ``bits``."""
        return self.init_quantizer(bits)[1]


def _round_side(q: GroupedLatticeQuantizer) -> None:
    """Round G and µ to their stored precision in place."""
    with torch.no_grad():
        q.set_state(generator=q.generator.to(SIDE_DTYPE).float(),
                    mu=q.mu.to(SIDE_DTYPE).float())


def quantize_layer(w: Tensor, h: Tensor, bits: Tensor, settings: GLVQSettings | None = None,
                   name: str = "layer", groups: Tensor | None = None) -> LayerResult:
    """GLVQ of one weight matrix.

    Args:
        w: ``(out, in)`` weight.
        h: ``(in, in)`` input second moment ``sum_t x_t x_t^T`` over calibration tokens.
        bits: ``(M,)`` integer bit width per group (see :func:`allocate_bits`).
        settings: optimisation settings.
        name: the layer's name, for error messages.
        groups: optional indices of the groups to optimise (the rest are initialised only);
            used to share the groups of a layer out across DDP ranks.

    Returns:
        A :class:`LayerResult` whose ``weight`` equals what :func:`dequantize` gives from the
        stored codes and side information.
    """
    s = settings or GLVQSettings()
    m = check_shapes(w.shape[0], w.shape[1], s.group_size, s.lattice_dim, name)
    bits = torch.as_tensor(bits, dtype=torch.int64).flatten()
    if bits.numel() != m:
        raise ValueError(f"'{name}': {bits.numel()} bit widths for {m} groups")
    if bool((bits < 1).any()):
        raise ValueError(f"'{name}': every group needs at least 1 bit, got {bits.tolist()}")
    if s.error_feedback:
        if groups is not None:
            raise ValueError("groups cannot be shared out when error_feedback is on "
                             "(the groups are quantized one after another)")
        return _quantize_with_feedback(w, h, bits, s, name)
    prob = _LayerProblem(w, h, s, name)
    res = _optimise(prob, bits, s, groups)
    # report the true relative output error (full H), as the error-feedback path does
    res.error = _relative_error(prob.w, res.weight, h)
    res.error_init = _relative_error(prob.w, res.extra.pop("weight_init"), h)
    return res


def _relative_error(w: Tensor, w_hat: Tensor, h: Tensor) -> float:
    """``tr(D H D^T) / tr(W H W^T)`` with ``D = W - W_hat``."""
    d = w - w_hat
    return float(torch.trace(d @ h @ d.T)) / max(float(torch.trace(w @ h @ w.T)), 1e-20)


@torch.no_grad()
def _initial_weight(prob: _LayerProblem, bits: Tensor) -> Tensor:
    """The weight the initial quantizer (no optimisation, no feedback) gives."""
    q0, _ = prob.init_quantizer(bits)
    return prob.weight(q0.reconstruct(q0.lattice_codes(q0.forward_transform(prob.x))))


def _optimise(prob: _LayerProblem, bits: Tensor, s: GLVQSettings,
              groups: Tensor | None) -> LayerResult:
    """The alternating optimisation of all groups of ``prob`` at once (see the module doc)."""
    q, _ = prob.init_quantizer(bits)
    g0 = q.generator.detach().clone()
    a = torch.zeros_like(g0, requires_grad=True)
    mu_logit = q.mu_logit.detach().clone().requires_grad_(q.use_compand)
    params = [a] + ([mu_logit] if q.use_compand else [])
    opt = torch.optim.Adam(params, lr=s.lr)
    eye = torch.eye(g0.shape[-1])
    active = torch.zeros(prob.m, dtype=torch.bool)
    active[groups if groups is not None else slice(None)] = True

    def current() -> tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad():
            q.generator.copy_(g0 @ (eye + a))
            q.mu_logit.copy_(mu_logit)
            k = q.lattice_codes(q.forward_transform(prob.x))
            w_cur = prob.weight(q.reconstruct(k))
            return prob.errors(w_cur), k, w_cur

    err, k, w_init = current()
    err_init = err.clone()
    best_err, best_a, best_mu = err.clone(), a.detach().clone(), mu_logit.detach().clone()
    outer = 0
    while bool(active.any()) and outer < s.max_outer:
        outer += 1
        for _ in range(s.inner_steps):
            opt.zero_grad(set_to_none=True)
            g = g0 @ (eye + a)
            yh = (k + 0.5) @ g
            mu = MU_MIN + (MU_MAX - MU_MIN) * torch.sigmoid(mu_logit)
            xh = q.inverse_transform(yh, mu)
            e = prob.errors(prob.weight(xh))
            loss = (e * active).sum() + s.reg * (a.pow(2).sum(dim=(1, 2)) * active).sum()
            loss.backward()
            opt.step()
            with torch.no_grad():  # frozen groups stay at their best state
                a[~active] = best_a[~active]
                mu_logit[~active] = best_mu[~active]
        err, k, _ = current()
        improved = err < best_err * (1 - s.tol)
        better = err < best_err
        best_a[better] = a.detach()[better]
        best_mu[better] = mu_logit.detach()[better]
        best_err = torch.minimum(best_err, err)
        active &= improved
    with torch.no_grad():
        q.generator.copy_(g0 @ (eye + best_a))
        q.mu_logit.copy_(best_mu)
    _round_side(q)
    with torch.no_grad():
        k = q.lattice_codes(q.forward_transform(prob.x))
        w_hat = prob.weight(q.reconstruct(k))
        rel = float(group_hessian_error(prob.w - w_hat, prob.h_blocks, s.group_size).sum()
                    / prob.ref.sum())
        rel_init = float((err_init * prob.ref).sum() / prob.ref.sum())
        codes = (k + 2.0 ** (q.bits.view(-1, 1, 1) - 1)).to(torch.int16)
    return LayerResult(codes=codes, generator=q.generator.detach().to(SIDE_DTYPE),
                       mu=q.mu.detach().to(SIDE_DTYPE), scale=q.scale.to(SIDE_DTYPE),
                       row_scale=None if prob.row_scale is None else prob.row_scale.to(SIDE_DTYPE),
                       bits=q.bits.clone(), weight=w_hat, error=rel, error_init=rel_init,
                       outer_steps=outer, compand=q.compand_mask.clone(),
                       extra={"weight_init": w_init})


def _quantize_with_feedback(w: Tensor, h: Tensor, bits: Tensor, s: GLVQSettings,
                            name: str) -> LayerResult:
    """Groups left to right, each group's error folded into the columns after it.

    With ``U`` the upper Cholesky factor of ``H^-1`` and ``b`` the current group's columns,
    the error ``D_b`` of group ``b`` is compensated by ``W_rest -= D_b U_bb^-1 U_b,rest`` and
    the group is optimised for ``tr(D_b Hs_b D_b^T)`` with ``Hs_b = (U_bb^T U_bb)^-1``, the
    Schur complement of ``H`` on the columns not yet quantized: the same optimal-brain-surgeon
    step as GPTQ, applied to a whole group of columns at once.
    """
    out, inp = w.shape
    gs = s.group_size
    m = inp // gs
    w = w.float()
    row_scale = _row_scale(w, s.row_scale)
    hd = h.double()
    dead = hd.diagonal() <= 0
    hd[dead, dead] = 1.0
    hd = hd + s.damp * hd.diagonal().mean() * torch.eye(inp, dtype=torch.float64)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hd)), upper=True)
    eye = torch.eye(gs, dtype=torch.float64)
    work = w.clone()
    work[:, dead] = 0.0
    parts: list[LayerResult] = []
    for b in range(m):
        c = slice(b * gs, (b + 1) * gs)
        ubb_inv = torch.linalg.solve_triangular(u[c, c], eye, upper=True)
        h_b = (ubb_inv @ ubb_inv.T).float()
        res = _optimise(_LayerProblem(work[:, c], h_b, s, "", row_scale=row_scale),
                        bits[b:b + 1], s, None)
        parts.append(res)
        if b < m - 1:
            delta = (work[:, c] - res.weight).double()
            work[:, (b + 1) * gs:] -= (delta @ ubb_inv @ u[c, (b + 1) * gs:]).float()
    codes = torch.cat([p.codes for p in parts])
    gen = torch.cat([p.generator for p in parts])
    mu = torch.cat([p.mu for p in parts])
    scale = torch.cat([p.scale for p in parts])
    compand = torch.cat([p.compand for p in parts])
    rs = None if row_scale is None else row_scale.to(SIDE_DTYPE)
    w_hat = dequantize(codes, gen, mu, scale, rs, bits, compand, out, gs)
    rel = _relative_error(w, w_hat, h.float())
    # the same quantizer without feedback or optimisation, for reference
    rel_init = _relative_error(w, _initial_weight(_LayerProblem(w, h, s, name), bits), h.float())
    return LayerResult(codes=codes, generator=gen, mu=mu, scale=scale, row_scale=rs, bits=bits,
                       weight=w_hat, error=rel, error_init=rel_init,
                       outer_steps=max(p.outer_steps for p in parts), compand=compand)


def dequantize(codes: Tensor, generator: Tensor, mu: Tensor, scale: Tensor,
               row_scale: Tensor | None, bits: Tensor, compand: Tensor, out_features: int,
               group_size: int) -> Tensor:
    """The weight ``(out, in)`` from stored codes and side information (float32)."""
    m, _, d = codes.shape
    q = GroupedLatticeQuantizer(d, groups=m, bits=bits, compand=compand,
                                mu=mu.float().clamp(MU_MIN, MU_MAX), scale=scale.float())
    with torch.no_grad():
        q.set_state(generator=generator.float(), mu=mu.float())
        _round_side(q)
        x_hat = q.decode(codes.to(torch.int64))
        w = ungroup_weight(x_hat, out_features, group_size)
        return w * row_scale.float()[:, None] if row_scale is not None else w


def allocate_bits(salience: Tensor, budget_bits: float, group_numel: int,
                  estimate: dict[int, Tensor] | None = None, min_bits: int = 1,
                  max_bits: int = 8) -> Tensor:
    """Integer bit width per group with total code bits ``<= budget_bits``.

    With ``estimate`` (salience-driven allocation): groups are ranked by ``salience``; the top
    ``k`` get ``N + 1`` bits and the bottom ``k`` get ``N - 1``, ``N`` the integer nearest the
    average code bits the budget allows, with
    ``k`` chosen to minimise the estimated error ``sum_g estimate[b_g][g]`` (``k = 0`` allowed,
    so the average stays ``N``). Without it every group gets ``N``. Then the budget is filled:
    while a whole group's worth of bits is left, the most salient ``N``-bit group is promoted
    (fractional targets such as 1.5 bits); while over budget, the least salient group is
    demoted (this pays for the side information).

    Args:
        salience: ``(M,)``, larger = more important.
        budget_bits: code bits available for this layer.
        group_numel: weights per group.
        estimate: ``{bits: (M,) error}`` for ``N - 1``, ``N`` and ``N + 1`` (optional).
        min_bits, max_bits: limits of a group's width.

    Raises:
        ValueError: when the budget is below ``min_bits`` for every group.
    """
    m = salience.numel()
    avg = budget_bits / (m * group_numel)
    if avg < min_bits:
        raise ValueError(
            f"the bit budget leaves {avg:.3f} code bits per weight after side information; "
            f"at least model.bits >= {min_bits} code bit per weight is needed (raise model.bits, "
            f"or lower the side information with a larger model.group_size)")
    n = int(min(max(math.floor(avg + 0.5), min_bits), max_bits))  # the width nearest the average
    order = torch.argsort(salience, descending=True, stable=True)
    bits = torch.full((m,), n, dtype=torch.int64)
    if estimate is not None and n - 1 >= min_bits and n + 1 <= max_bits \
            and all(b in estimate for b in (n - 1, n, n + 1)):
        best_k, best_cost = 0, float(estimate[n].sum())
        for k in range(1, m // 2 + 1):
            top, bottom = order[:k], order[m - k:]
            cost = (float(estimate[n].sum()) + float((estimate[n + 1] - estimate[n])[top].sum())
                    + float((estimate[n - 1] - estimate[n])[bottom].sum()))
            if cost < best_cost:
                best_k, best_cost = k, cost
        bits[order[:best_k]] = n + 1
        bits[order[m - best_k:]] = n - 1
    left = budget_bits - float(bits.sum()) * group_numel
    for g in order.tolist():  # promote the most salient groups while whole groups fit
        if left < group_numel:
            break
        if bits[g] == n and n + 1 <= max_bits:
            bits[g] += 1
            left -= group_numel
    for g in reversed(order.tolist()):  # demote the least salient while over budget
        if left >= 0:
            break
        if bits[g] > min_bits and bits[g] >= n:
            bits[g] -= 1
            left += group_numel
    if left < 0:
        for g in reversed(order.tolist()):
            while left < 0 and bits[g] > min_bits:
                bits[g] -= 1
                left += group_numel
    return bits


def rtn_quantize(w: Tensor, bits: int, group_size: int) -> tuple[Tensor, float]:
    """Round-to-nearest asymmetric scalar quantization per (row, group of columns).

    Scale and zero point are float16 per row and group, so the layer costs
    ``bits + 32 / group_size`` bits per weight. Returns the dequantized weight and that figure.
    """
    out, inp = w.shape
    if inp % group_size:
        raise ValueError(f"model.group_size={group_size} does not divide the input width {inp}")
    v = w.float().reshape(out, inp // group_size, group_size)
    lo, hi = v.amin(-1, keepdim=True), v.amax(-1, keepdim=True)
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax).clamp_min(1e-8).to(SIDE_DTYPE).float()
    zero = torch.round(-lo / scale).clamp(0, qmax).to(SIDE_DTYPE).float()
    codes = torch.clamp(torch.round(v / scale) + zero, 0, qmax)
    w_hat = ((codes - zero) * scale).reshape(out, inp)
    return w_hat, bits + 2 * SIDE_BITS / group_size

"""GLVQ of one linear layer: the alternating optimisation, with or without error feedback.

Objective (see :mod:`llvq.llm.groups`): the layer's output error ``tr(D H D^T)``. Without error
feedback the diagonal blocks ``H_g`` of ``H`` are kept (cross-group terms dropped), so the
error is a sum over groups and all groups of a layer are optimised in one batched problem;
with it (:class:`llvq.llm.settings.GLVQSettings` ``error_feedback``) the groups go left to right
(or by decreasing input energy with ``act_order``) and each group's error is folded into the
columns not yet quantized.

Alternating optimisation (paper, Sec. 3): codes by Babai rounding with ``G`` and ``µ`` fixed;
then ``inner_steps`` Adam steps on ``G`` (as ``G0 (I + A)``) and ``µ`` with the codes fixed,
minimising the relative output error plus ``reg * ||A||_F^2`` (a Frobenius penalty toward the
initial generator); per group, stop when the relative improvement of the error after
re-rounding falls below ``tol``; the best state seen is kept. Side information is rounded to
float16 before the final codes are computed, so the stored model is exactly the one measured.
The ``glvq`` quantizer does the coding; every call gets the current per-group parameters as a
:class:`llvq.quantizers.glvq.GLVQState`, so no module is mutated.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llvq.llm.groups import (
    SIDE_DTYPE,
    LayerProblem,
    LayerResult,
    check_shapes,
    dequantize,
    group_hessian_error,
    inverse_cholesky,
    relative_error,
    round_side,
    row_scales,
)
from llvq.llm.settings import GLVQSettings
from llvq.quantizers.glvq import logit_to_mu

__all__ = ["quantize_layer"]


def quantize_layer(w: Tensor, h: Tensor, bits: Tensor, settings: GLVQSettings | None = None,
                   name: str = "layer", groups: Tensor | None = None) -> LayerResult:
    """GLVQ of one weight matrix.

    Args:
        w: ``(out, in)`` weight.
        h: ``(in, in)`` input second moment ``sum_t x_t x_t^T`` over calibration tokens.
        bits: ``(M,)`` integer bit width per group (see :func:`llvq.llm.allocation.allocate_bits`).
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
            raise ValueError("groups cannot be shared out when model.glvq.error_feedback is on "
                             "(the groups are quantized one after another)")
        return _quantize_with_feedback(w, h, bits, s, name)
    prob = LayerProblem(w, h, s, name)
    res = _optimise(prob, bits, s, groups)
    # report the true relative output error (full H), as the error-feedback path does
    res.error = relative_error(prob.w, res.weight, h)
    res.error_init = relative_error(prob.w, res.extra.pop("weight_init"), h)
    return res


def _optimise(prob: LayerProblem, bits: Tensor, s: GLVQSettings,
              groups: Tensor | None) -> LayerResult:
    """The alternating optimisation of all groups of ``prob`` at once (see the module doc)."""
    q = prob.q
    st0, _ = prob.init_state(bits)
    use_compand = bool(st0.compand.any())
    g0 = st0.generator.detach().clone()
    a = torch.zeros_like(g0, requires_grad=True)
    mu_logit = prob.mu_logit0.detach().clone().requires_grad_(use_compand)
    params = [a] + ([mu_logit] if use_compand else [])
    opt = torch.optim.Adam(params, lr=s.lr)
    eye = torch.eye(g0.shape[-1])
    active = torch.zeros(prob.m, dtype=torch.bool)
    active[groups if groups is not None else slice(None)] = True

    def current() -> tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad():
            st = st0.replace(generator=g0 @ (eye + a), mu=logit_to_mu(mu_logit))
            k = prob.codes(st)
            w_cur = prob.weight(q.reconstruct(k, st))
            return prob.errors(w_cur), k, w_cur

    err, k, w_init = current()
    err_init = err.clone()
    best_err, best_a, best_mu = err.clone(), a.detach().clone(), mu_logit.detach().clone()
    outer = 0
    while bool(active.any()) and outer < s.max_outer:
        outer += 1
        for _ in range(s.inner_steps):
            opt.zero_grad(set_to_none=True)
            st = st0.replace(generator=g0 @ (eye + a), mu=logit_to_mu(mu_logit))
            e = prob.errors(prob.weight(q.reconstruct(k, st)))
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
        g, mu = round_side(g0 @ (eye + best_a), logit_to_mu(best_mu))
        st = st0.replace(generator=g, mu=mu)
        k = prob.codes(st)
        w_hat = prob.weight(q.reconstruct(k, st))
        rel = float(group_hessian_error(prob.w - w_hat, prob.h_blocks, s.group_size).sum()
                    / prob.ref.sum())
        rel_init = float((err_init * prob.ref).sum() / prob.ref.sum())
        codes = (k + q.code_offset(st)).to(torch.int16)
    return LayerResult(codes=codes, generator=g.to(SIDE_DTYPE), mu=mu.to(SIDE_DTYPE),
                       scale=st.scale.to(SIDE_DTYPE),
                       row_scale=None if prob.row_scale is None else prob.row_scale.to(SIDE_DTYPE),
                       bits=st.bits.clone(), weight=w_hat, error=rel, error_init=rel_init,
                       outer_steps=outer, compand=st.compand.clone(), code=s.code,
                       extra={"weight_init": w_init})


def _quantize_with_feedback(w: Tensor, h: Tensor, bits: Tensor, s: GLVQSettings,
                            name: str) -> LayerResult:
    """Groups one after another, each group's error folded into the columns after it.

    With ``U`` the upper Cholesky factor of ``H^-1`` and ``b`` the current group's columns,
    the error ``D_b`` of group ``b`` is compensated by ``W_rest -= D_b U_bb^-1 U_b,rest`` and
    the group is optimised for ``tr(D_b Hs_b D_b^T)`` with ``Hs_b = (U_bb^T U_bb)^-1``, the
    Schur complement of ``H`` on the columns not yet quantized: the same optimal-brain-surgeon
    step as GPTQ, applied to a whole group of columns at once. The order is left to right, or
    with ``s.act_order`` by decreasing ``diag H`` summed over each group (the columns are
    permuted group-wise for the pass and every result is put back in place).
    """
    out, inp = w.shape
    gs = s.group_size
    m = inp // gs
    w = w.float()
    row_scale = row_scales(w, s.row_scale)
    hd = h.double()
    dead = hd.diagonal() <= 0
    hd[dead, dead] = 1.0
    order = torch.arange(m)
    if s.act_order:  # the most energetic groups first; ties keep left to right
        energy = h.double().diagonal().clamp_min(0).view(m, gs).sum(1)
        order = torch.sort(-energy, stable=True).indices
    cols = (order[:, None] * gs + torch.arange(gs)).flatten()  # the pass's column order
    hd = hd[cols][:, cols]
    hd = hd + s.damp * hd.diagonal().mean() * torch.eye(inp, dtype=torch.float64)
    u = inverse_cholesky(hd)
    eye = torch.eye(gs, dtype=torch.float64)
    work = w.clone()
    work[:, dead] = 0.0
    work = work[:, cols]
    parts: list[LayerResult] = [None] * m  # type: ignore[list-item]
    for step, b in enumerate(order.tolist()):
        c = slice(step * gs, (step + 1) * gs)
        ubb_inv = torch.linalg.solve_triangular(u[c, c], eye, upper=True)
        h_b = (ubb_inv @ ubb_inv.T).float()
        res = _optimise(LayerProblem(work[:, c], h_b, s, "", row_scale=row_scale),
                        bits[b:b + 1], s, None)
        parts[b] = res  # stored in place: group b
        if step < m - 1:
            delta = (work[:, c] - res.weight).double()
            work[:, (step + 1) * gs:] -= (delta @ ubb_inv @ u[c, (step + 1) * gs:]).float()
    codes = torch.cat([p.codes for p in parts])
    gen = torch.cat([p.generator for p in parts])
    mu = torch.cat([p.mu for p in parts])
    scale = torch.cat([p.scale for p in parts])
    compand = torch.cat([p.compand for p in parts])
    rs = None if row_scale is None else row_scale.to(SIDE_DTYPE)
    w_hat = dequantize(codes, gen, mu, scale, rs, bits, compand, out, gs, s.code)
    rel = relative_error(w, w_hat, h.float())
    # the same quantizer without feedback or optimisation, for reference
    rel_init = relative_error(w, LayerProblem(w, h, s, name).initial_weight(bits), h.float())
    return LayerResult(codes=codes, generator=gen, mu=mu, scale=scale, row_scale=rs, bits=bits,
                       weight=w_hat, error=rel, error_init=rel_init,
                       outer_steps=max(p.outer_steps for p in parts), compand=compand,
                       code=s.code)

"""The parametrizations of lattice design: a unit-volume generator ``B(θ)`` (rows = basis).

* ``free``: a free lower-triangular ``B`` (Agrell & Eriksson 1998), LLL-reduced and
  re-triangularised every ``reduce_every`` steps;
* ``splice``: the orthogonal direct sum ``L1 ⊕ L2`` with the optimal relative scale, unit
  volume, no parameters (the baseline);
* ``householder``: ``B = H_k ... H_1 B_s`` with learnable reflection vectors (Zhang et al. 2025,
  arXiv:2502.06887, Sec. 3.1);
* ``matrix_exp``: ``B = exp(A) B_s`` with ``A`` skew-symmetric and learnable (ibid., Sec. 3.2).

``B_s`` is the splice of the parts (:func:`~llvq.lattices.parts.splice_generator`) or, with
``glue=True``, their densest glued superlattice (:func:`~llvq.lattices.parts.glue_generator`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from llvq.lattices.parts import default_parts, glue_generator, part_lattice, splice_generator
from llvq.lattices.reduction import lll

__all__ = ["METHODS", "LatticeParametrization", "check_design"]

METHODS = ("free", "splice", "householder", "matrix_exp")


def check_design(dim: int, method: str, parts: Sequence[int | str] | None = None,
                 glue: bool = False, init: str = "random") -> None:
    """Raise one ``ValueError`` naming the setting when ``dim``, ``method``, ``parts`` or ``glue``
    is bad."""
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"lattice.dim={dim!r}: the lattice dimension must be an integer >= 1")
    if method not in METHODS:
        raise ValueError(f"lattice.method={method!r} is unknown; choose one of {METHODS}")
    if glue and method == "free" and init != "splice":
        raise ValueError("lattice.glue=true glues the spliced parts: use a splice-based method "
                         "(splice, householder, matrix_exp) or lattice.method=free with "
                         "lattice.init=splice")
    if glue and parts is None and dim < 2:
        raise ValueError(f"lattice.glue=true needs two or more parts, so lattice.dim >= 2 "
                         f"(got {dim})")
    if method in ("splice", "householder", "matrix_exp") and parts is None and dim < 2:
        raise ValueError(f"lattice.method={method!r} splices two lattices and needs "
                         f"lattice.dim >= 2 (got {dim}); use lattice.method=free")
    if parts is not None:
        dims = [part_lattice(p).dim for p in parts]
        if len(dims) < 2 or sum(dims) != dim:
            raise ValueError(f"lattice.parts={list(parts)} has dimensions {dims}; give two or more "
                             f"lattices whose dimensions add up to lattice.dim={dim}")


def _lower_triangular(b: Tensor) -> Tensor:
    """The same lattice, rotated so that its generator is lower triangular with positive diagonal."""
    _, r = torch.linalg.qr(b.T)  # b.T = q r  ->  b = r.T q.T, a rotation of r.T
    s = torch.sign(torch.diagonal(r))
    s[s == 0] = 1.0
    return (r * s[:, None]).T.contiguous()


class LatticeParametrization(nn.Module):
    """A unit-volume generator ``B(θ)`` (rows = basis) in one of :data:`METHODS`.

    Args:
        dim: lattice dimension ``n >= 1``.
        method: ``free``, ``splice``, ``householder`` or ``matrix_exp``.
        parts: the spliced lattices (dimensions or names), default :func:`auto_parts`.
        reflections: number of Householder vectors (default ``n`` rounded up to even).
        init: ``free`` only: ``"random"`` (a Gaussian lower-triangular start) or ``"splice"``.
        init_noise: scale of the random start of the fusion parameters (0 = exactly the splice).
        rebase: fusion only: at every reduction, absorb ``Q`` into the base (``base <- LLL(Q
            base)``) and restart ``Q`` at the identity. Without it the fusion is the paper's
            ``Q B_splice``, whose Gram matrix keeps the splice's eigenvalues; with it each
            reduction changes the basis, so the reachable lattices are no longer tied to them.
        seed: seed of the initial parameters (and of the glue search).
        glue: start from the densest glued superlattice of the parts instead of their splice
            (:func:`glue_generator`; default parts :func:`default_parts`). ``glue_index_bits``
            then records the index ``2^k`` found.
        glue_trials: restarts of the glue search.
    """

    def __init__(self, dim: int, method: str = "free", parts: Sequence[int | str] | None = None,
                 reflections: int | None = None, init: str = "random", init_noise: float = 1e-3,
                 rebase: bool = False, seed: int = 0, glue: bool = False,
                 glue_trials: int = 8) -> None:
        super().__init__()
        self.rebase = bool(rebase)
        check_design(dim, method, parts, glue=glue, init=init)
        if not isinstance(glue_trials, int) or glue_trials < 1:
            raise ValueError(f"lattice.glue_trials={glue_trials!r}: need at least one restart")
        if init not in ("random", "splice"):
            raise ValueError(f"lattice.init={init!r}: choose 'random' or 'splice'")
        self.dim, self.method = dim, method
        gen = torch.Generator().manual_seed(seed)
        needs_splice = method != "free" or init == "splice"
        if needs_splice and parts is None:
            parts = default_parts(dim, glue) if dim > 1 else None
        self.parts = [str(p) if isinstance(p, (str, Path)) else int(p) for p in parts] if parts else None
        self.glue_index_bits: int | None = None
        if needs_splice and glue:
            glued = glue_generator(self.parts, glue_trials, seed)
            base, self.glue_index_bits = glued.generator, glued.index_bits
        else:
            base = splice_generator(self.parts) if needs_splice else None
        if method == "free":
            if base is None:
                start = torch.randn(dim, dim, generator=gen, dtype=torch.float64).tril()
                start.diagonal().abs_().add_(0.1)
            else:
                start = _lower_triangular(base)
            self.weight = nn.Parameter(start)
        else:
            self.register_buffer("base", base)
        if method == "householder":
            k = reflections if reflections is not None else dim + dim % 2
            if k < 1:
                raise ValueError(f"lattice.reflections={k}: need at least one reflection")
            v = torch.randn(k, dim, generator=gen, dtype=torch.float64)
            # pairs of (almost) equal reflections cancel: start next to the splice
            v[1::2] = v[0: k - k % 2: 2] + init_noise * torch.randn(
                k // 2, dim, generator=gen, dtype=torch.float64)
            self.vectors = nn.Parameter(v)
        elif method == "matrix_exp":
            a = init_noise * torch.randn(dim, dim, generator=gen, dtype=torch.float64)
            self.skew = nn.Parameter(a.triu(1))

    def orthogonal(self) -> Tensor:
        """The fusion factor ``Q`` (identity for ``free`` and ``splice``)."""
        eye = torch.eye(self.dim, dtype=torch.float64)
        if self.method == "householder":
            q = eye
            for v in self.vectors:  # Q = H_k ... H_1
                v = v / v.norm()
                q = q - 2.0 * v[:, None] * (v @ q)[None, :]
            return q
        if self.method == "matrix_exp":
            a = self.skew.triu(1)
            return torch.linalg.matrix_exp(a - a.T)
        return eye

    def forward(self) -> Tensor:
        """The generator ``(n, n)``, float64, unit volume, differentiable in the parameters."""
        if self.method == "free":
            b = self.weight.tril()
        else:
            b = self.orthogonal() @ self.base
        det = torch.linalg.det(b).abs()
        return b / det ** (1.0 / self.dim)

    @torch.no_grad()
    def reduce_(self) -> None:
        """``free``: replace the basis by its LLL reduction, re-triangularised (same lattice).
        Fusion with ``rebase``: ``base <- LLL(Q base)`` and ``Q <- I`` (same lattice)."""
        if self.method == "free":
            reduced, _ = lll(self.forward().numpy())
            self.weight.copy_(_lower_triangular(torch.from_numpy(reduced)))
        elif self.rebase and self.method in ("householder", "matrix_exp"):
            reduced, _ = lll(self.forward().numpy())
            self.base.copy_(torch.from_numpy(reduced))
            if self.method == "matrix_exp":
                self.skew.zero_()
            else:
                k = self.vectors.shape[0]
                self.vectors[1::2] = self.vectors[0: k - k % 2: 2]  # equal pairs cancel
                if k % 2:  # an odd reflection left over: fold it into the base
                    v = self.vectors[-1] / self.vectors[-1].norm()
                    self.base.copy_(self.base - 2.0 * v[:, None] * (v @ self.base)[None, :])

    @torch.no_grad()
    def normalize_(self) -> None:
        """``free``: rescale the parameter to unit volume (keeps step sizes meaningful)."""
        if self.method == "free":
            self.weight.copy_(self.forward())

"""Gradient-based lattice design: stochastic gradient descent on the normalized second moment.

Objective (Agrell & Eriksson, "Optimization of lattices for quantization", IEEE T-IT 44(5),
1998, eq. 11-13): for a generator ``B`` (rows = basis), ``u ~ U[0,1)^n``, ``x = u B``,
``z`` the integer coordinates of the *exact* closest point, ``e = (u - z) B`` and

    G(B) = E ||e||^2 / (n |det B|^(2/n)).

``z`` is treated as a constant (the nearest-point choice is piecewise constant, its gradient is
zero almost everywhere), so autograd through ``e = (u - z) B`` gives the Agrell–Eriksson update.

Parametrizations (``method``):

* ``free``: a free lower-triangular ``B`` (Agrell & Eriksson 1998), LLL-reduced and
  re-triangularised every ``reduce_every`` steps;
* ``splice``: the orthogonal direct sum of two lattices ``L1 ⊕ L2`` with the optimal relative
  scale, unit volume, no parameters (the baseline);
* ``householder``: ``B = H_k ... H_1 B_s``, ``H_i = I - 2 v_i v_i^T / |v_i|^2`` with learnable
  ``v_i`` (Zhang et al., "Gradient Based Method for the Fusion of Lattice Quantizers", 2025,
  arXiv:2502.06887, Sec. 3.1);
* ``matrix_exp``: ``B = exp(A) B_s`` with ``A`` skew-symmetric and learnable (ibid., Sec. 3.2).

With ``glue=True`` the base ``B_s`` is not the splice but its densest glued superlattice found by
:func:`llvq.lattices.glue.glue_search` (parts at equal minimum norm, index ``2^k``): a discrete
move SGD cannot make, after which the fusion (or ``free`` with ``init="splice"``) refines it.

With rows as basis vectors an orthogonal factor on the *right* only rotates the lattice (same
NSM); the fusion factor therefore acts on the *left* (it mixes the basis vectors of the two
parts; the paper's column convention writes the same thing as ``B_s Q``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from llvq.lattices.generators import BEST_KNOWN, get_lattice
from llvq.lattices.glue import GlueResult, glue_search
from llvq.lattices.io import load_lattice, load_metadata
from llvq.lattices.lattice import Lattice
from llvq.lattices.reduction import lll
from llvq.lattices.sphere import check_generator, prepare

__all__ = [
    "GLUE_PARTS",
    "METHODS",
    "REFERENCE_NSM",
    "SEED_NSM",
    "DesignResult",
    "LatticeParametrization",
    "auto_parts",
    "check_design",
    "decode_coordinates",
    "default_parts",
    "design_lattice",
    "glue_generator",
    "nsm_loss",
    "precise_nsm",
    "save_designed",
    "splice_generator",
]

METHODS = ("free", "splice", "householder", "matrix_exp")

#: best known NSM per dimension (docs: /reference nsm.md, independent Monte-Carlo column).
REFERENCE_NSM: dict[int, float] = {
    1: 1 / 12, 2: 0.080188, 3: 0.078543, 4: 0.076603, 5: 0.075625, 6: 0.074244, 7: 0.073116,
    8: 0.071682, 9: 0.071623, 10: 0.070814, 11: 0.070426, 12: 0.070031, 13: 0.069693,
    14: 0.069261, 15: 0.068873, 16: 0.068301, 17: 0.068217, 18: 0.067936, 19: 0.067695,
    20: 0.067324, 21: 0.067035, 22: 0.066656, 23: 0.066264, 24: 0.065755,
}

#: NSM of the seed lattice ``get_lattice(BEST_KNOWN[n])`` used for splicing: the reference value,
#: except 12-15 where that lattice is a section of Lambda16 (10^5-sample estimates, ±4e-5).
SEED_NSM: dict[int, float] = {**REFERENCE_NSM, 12: 0.070619, 13: 0.071293, 14: 0.071132,
                              15: 0.069295}


#: parts of the glue search by dimension: in 17-23 ``Λ16 ⊕ R`` where ``R`` is the orthogonal
#: complement in ``E8`` of the root lattice ``N`` that cuts the Leech section ``Λ24 ∩ N^⊥`` (the
#: best known lattice there). ``Λ16 ⊕ √2 R`` is a sublattice of that section (and ``√2E8 ⊕ √2E8``
#: one of ``Λ16``), so it is where a glue search can find it; the search itself does not know the
#: answer (docs: lattice_design.md).
GLUE_PARTS: dict[int, tuple[str, str]] = {
    16: ("E8", "E8"), 17: ("Lambda16", "A1"), 18: ("Lambda16", "A2"), 19: ("Lambda16", "A3"),
    20: ("Lambda16", "D4"), 21: ("Lambda16", "D5"), 22: ("Lambda16", "E6"),
    23: ("Lambda16", "E7"),
}


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
        dims = [_part(p).dim for p in parts]
        if len(dims) < 2 or sum(dims) != dim:
            raise ValueError(f"lattice.parts={list(parts)} has dimensions {dims}; give two or more "
                             f"lattices whose dimensions add up to lattice.dim={dim}")


def _is_file_part(p: object) -> bool:
    return isinstance(p, (str, Path)) and (str(p).endswith(".safetensors") or Path(p).is_file())


def _part(p: int | str | Path | Lattice) -> Lattice:
    """A part of a splice: a dimension (its best known lattice), a lattice name, or a generator
    file (``.safetensors`` with tensor ``generator``, e.g. a lattice designed here)."""
    if isinstance(p, Lattice):
        return p
    if _is_file_part(p):
        try:
            return load_lattice(p)  # a missing or malformed file: load_generator's ValueError
        except ValueError as err:
            raise ValueError(f"lattice.parts: {err}") from None
    if isinstance(p, (int, np.integer)) and not isinstance(p, bool):
        if int(p) not in BEST_KNOWN:
            raise ValueError(f"lattice.parts: no seed lattice of dimension {p} (known: "
                             f"{min(BEST_KNOWN)}-{max(BEST_KNOWN)})")
        return get_lattice(BEST_KNOWN[int(p)])
    try:
        return get_lattice(str(p))
    except (ValueError, KeyError) as err:
        raise ValueError(f"lattice.parts: unknown seed lattice {p!r} ({err})") from None


def auto_parts(dim: int, max_part: int = 16) -> tuple[int, int]:
    """The split ``n1 + n2 = dim`` whose optimally scaled splice has the lowest NSM.

    Uses ``G = G1^(n1/n) G2^(n2/n)`` with the :data:`SEED_NSM` of each part; parts are at most
    ``max_part``-dimensional (default 16: fuse lattices of lower dimension, not sections of the
    Leech lattice).
    """
    top = min(dim - 1, max_part)
    splits = [(a, dim - a) for a in range(1, top + 1) if a >= dim - a]
    if not splits:
        raise ValueError(f"lattice.dim={dim}: no split into two parts of dimension <= {max_part}; "
                         f"set lattice.parts explicitly")
    return min(splits, key=lambda s: sum(k * math.log(SEED_NSM[k]) for k in s))


def default_parts(dim: int, glue: bool = False) -> list[int | str]:
    """The parts used when ``lattice.parts`` is null: :data:`GLUE_PARTS` for a glue search in
    dimensions 16-23, else :func:`auto_parts`."""
    if glue and dim in GLUE_PARTS:
        return list(GLUE_PARTS[dim])
    return list(auto_parts(dim))


def glue_generator(parts: Sequence[int | str | Path | Lattice], trials: int = 8,
                   seed: int = 0) -> GlueResult:
    """The densest glued superlattice of ``L1 ⊕ L2 ⊕ ...`` (parts as for :func:`splice_generator`)
    that :func:`llvq.lattices.glue.glue_search` finds; unit volume, LLL-reduced.

    The search is deterministic, so its result is kept per process for the same parts (names,
    paths or lattice objects), trials and seed: a benchmark row that reports the glued lattice
    and then fuses from it with two methods searches once (about 25 s in dimension 22).
    """
    found = _glue_once(tuple(parts), trials, seed)
    return dataclasses.replace(found, generator=found.generator.clone(), code=list(found.code))


@functools.lru_cache(maxsize=8)
def _glue_once(parts: tuple, trials: int, seed: int) -> GlueResult:
    return glue_search([_part(p) for p in parts], trials=trials, seed=seed)


def splice_generator(parts: Sequence[int | str | Path | Lattice]) -> Tensor:
    """Block-diagonal generator of ``L1 ⊕ L2 ⊕ ...``, optimally scaled, unit volume (float64).

    A part may be a generator file, e.g. a lattice designed by :func:`design_lattice`: fusing a
    designed ``n``-dimensional lattice with ``Z1`` or ``A2`` builds dimension ``n + 1`` or ``n + 2``
    the way laminated lattices are built (docs: lattice_design.md).

    Each part is scaled to unit volume and then by ``G_i^(-1/2)`` so that every part has the
    same per-dimension second moment, which minimises the NSM of the sum (the weighted AM–GM
    bound ``G = prod G_i^(n_i/n)``); ``G_i`` is the reference value when the part is the best
    known lattice of its dimension, the ``nsm`` metadata of a generator file that has one, else
    a 20,000-sample estimate.
    """
    blocks = []
    for p in parts:
        lat = _part(p)
        g = lat.generator / lat.volume ** (1.0 / lat.dim)
        if lat.dim == 1 or BEST_KNOWN.get(lat.dim, "").lower() == lat.name.lower():
            g_i = SEED_NSM[lat.dim]
        elif _is_file_part(p) and "nsm" in (meta := load_metadata(p)):
            g_i = float(meta["nsm"])  # a designed lattice records its precise NSM
        else:
            g_i = precise_nsm(g, 20_000, seed=0)[0]
        blocks.append(g / math.sqrt(g_i))
    b = torch.block_diag(*blocks)
    return b / float(torch.linalg.det(b).abs()) ** (1.0 / b.shape[0])


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


def decode_coordinates(generator: Tensor, x: Tensor) -> Tensor:
    """Integer coordinates (float64, ``(N, n)``) of the exact closest point of each row of ``x``.

    Same answer as ``closest_coordinates(generator, x, "exact")`` (on CPU, float64): the compiled
    Schnorr–Euchner kernel of :mod:`llvq.lattices._ckernel` when a C compiler is available,
    else the batched torch search of :mod:`llvq.lattices.sphere`.
    """
    basis = prepare(generator)
    x64 = x.detach().double().cpu().reshape(-1, basis.n)
    return basis.coordinates(x64, "exact")


def nsm_loss(generator: Tensor, u: Tensor) -> Tensor:
    """Batch estimate of the NSM, differentiable in ``generator`` (Agrell & Eriksson 1998).

    Args:
        generator: ``(n, n)`` float64 generator (rows = basis), any volume.
        u: ``(N, n)`` uniform ``[0, 1)`` coordinates; ``x = u @ generator``.

    Returns:
        scalar ``mean ||(u - z) B||^2 / (n |det B|^(2/n))`` with the nearest-point coordinates
        ``z`` held constant (stop-gradient through the decoder).
    """
    n = generator.shape[0]
    with torch.no_grad():
        z = decode_coordinates(generator.detach(), u @ generator.detach())  # (N, n)
    e = (u - z) @ generator  # (N, n) error, uniform over the Voronoi cell
    vol = torch.linalg.det(generator).abs()
    return e.square().sum(-1).mean() / (n * vol ** (2.0 / n))


def precise_nsm(generator: Tensor, num_samples: int = 200_000, seed: int = 0,
                batch_size: int = 50_000) -> tuple[float, float]:
    """Monte-Carlo NSM ``(G, standard error)`` with the exact decoder (as :func:`llvq.lattices.nsm`)."""
    g = check_generator(generator).detach().double().cpu()
    n = g.shape[0]
    vol = float(torch.linalg.det(g).abs())
    total = total_sq = 0.0
    done, i = 0, 0
    while done < num_samples:
        m = min(batch_size, num_samples - done)
        u = torch.rand(m, n, generator=torch.Generator().manual_seed(seed + i), dtype=torch.float64)
        x = u @ g
        e = (x - decode_coordinates(g, x) @ g).square().sum(-1) / (n * vol ** (2.0 / n))
        total, total_sq, done, i = total + float(e.sum()), total_sq + float(e.square().sum()), done + m, i + 1
    mean = total / done
    var = max(total_sq / done - mean * mean, 0.0) * done / max(done - 1, 1)
    return mean, math.sqrt(var / done)


@dataclass
class DesignResult:
    """What :func:`design_lattice` found: the generator, its NSM ± s.e., and the batch history."""

    generator: Tensor
    nsm: float
    se: float
    history: list[float] = field(default_factory=list)
    seconds: float = 0.0


def lr_at(step: int, lr: float, anneal: float) -> float:
    """Annealed step size ``lr / (1 + step / anneal)`` (``anneal <= 0``: constant)."""
    return lr / (1.0 + step / anneal) if anneal > 0 else lr


def design_lattice(dim: int, method: str = "free", steps: int = 2000, batch_size: int = 512,
                   lr: float = 0.5, anneal: float | None = None, momentum: float = 0.0,
                   reduce_every: int = 100, parts: Sequence[int | str] | None = None,
                   reflections: int | None = None, init: str = "random", rebase: bool = False,
                   seed: int = 0, eval_samples: int = 100_000, glue: bool = False,
                   glue_trials: int = 8,
                   callback: Callable[[int, float], None] | None = None) -> DesignResult:
    """Search a low-NSM lattice by SGD (outside Lightning; the module runs the same step).

    Args:
        dim: dimension.
        method: one of :data:`METHODS`.
        steps: SGD steps (0 for ``splice``: nothing to learn).
        batch_size: uniform samples per step.
        lr: initial step size; annealed as ``lr / (1 + t / anneal)``.
        anneal: annealing time in steps (default ``steps / 10``).
        momentum: SGD momentum.
        reduce_every: LLL-reduce the ``free`` basis (or rebase a fusion, with ``rebase``) every
            this many steps (0 = never).
        parts, reflections, init, rebase, glue, glue_trials: see :class:`LatticeParametrization`.
        seed: seeds the initial parameters and the samples.
        eval_samples: samples of the final NSM estimate.
        callback: called as ``callback(step, batch_nsm)``.
    """
    import time

    t0 = time.perf_counter()
    param = LatticeParametrization(dim, method, parts, reflections, init, rebase=rebase, seed=seed,
                                   glue=glue, glue_trials=glue_trials)
    step_fn = DesignStep(param, lr, anneal if anneal is not None else steps / 10, momentum,
                         reduce_every, seed)
    history = []
    for t in range(steps if list(param.parameters()) else 0):
        value = step_fn(t, batch_size)
        history.append(value)
        if callback is not None:
            callback(t, value)
    g = param().detach()
    value, se = precise_nsm(g, eval_samples, seed=seed + 1_000_003)
    return DesignResult(g, value, se, history, time.perf_counter() - t0)


class DesignStep:
    """One SGD step on the NSM: sample, decode exactly, backpropagate, anneal, renormalise, reduce.

    Args:
        param: the parametrization to train.
        lr, anneal, momentum, reduce_every: see :func:`design_lattice`.
        seed: seed of the uniform samples.
    """

    def __init__(self, param: LatticeParametrization, lr: float, anneal: float,
                 momentum: float = 0.0, reduce_every: int = 100, seed: int = 0) -> None:
        self.param, self.lr, self.anneal, self.reduce_every = param, lr, anneal, reduce_every
        params = list(param.parameters())
        self.opt = torch.optim.SGD(params, lr=lr, momentum=momentum) if params else None
        self.gen = torch.Generator().manual_seed(seed + 7919)

    def __call__(self, t: int, batch_size: int) -> float:
        u = torch.rand(batch_size, self.param.dim, generator=self.gen, dtype=torch.float64)
        loss = nsm_loss(self.param(), u)
        if self.opt is not None:
            for group in self.opt.param_groups:
                group["lr"] = lr_at(t, self.lr, self.anneal)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.param.normalize_()
            if self.reduce_every > 0 and (t + 1) % self.reduce_every == 0:
                self.param.reduce_()
        return float(loss.detach())


def save_designed(path: str | Path, generator: Tensor, **metadata: object) -> Path:
    """Save ``generator`` as safetensors (tensor ``generator``, rows = basis) with string metadata.

    The file loads with :func:`llvq.lattices.load_generator` and as a quantizer with
    ``model/quantizer=lattice quantizer.generator=<path>``.
    """
    g = check_generator(generator).detach().double().cpu().contiguous()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({"generator": g}, str(p), metadata={k: str(v) for k, v in metadata.items()})
    return p

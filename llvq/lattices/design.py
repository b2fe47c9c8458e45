"""Gradient-based lattice design: stochastic gradient descent on the normalized second moment.

This module holds the settings (:class:`DesignConfig`), the one design step shared by
``train.py`` (:class:`~llvq.modules.LatticeDesignModule`) and the benchmark
(:func:`design_lattice`, :class:`DesignStep`) and the generator files; the objective is in
:mod:`llvq.lattices.objective`, the parametrizations in :mod:`llvq.lattices.parametrization`
and the seed lattices, splice and glue in :mod:`llvq.lattices.parts` (all re-exported here).

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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from llvq.lattices.objective import decode_coordinates, nsm_loss, precise_nsm
from llvq.lattices.parametrization import METHODS, LatticeParametrization, check_design
from llvq.lattices.parts import (
    GLUE_PARTS,
    REFERENCE_NSM,
    SEED_NSM,
    auto_parts,
    default_parts,
    glue_generator,
    part_lattice,
    splice_generator,
)
from llvq.lattices.sphere import check_generator

__all__ = [
    "GLUE_PARTS",
    "METHODS",
    "REFERENCE_NSM",
    "SEED_NSM",
    "DesignConfig",
    "DesignResult",
    "DesignStep",
    "LatticeParametrization",
    "auto_parts",
    "check_design",
    "decode_coordinates",
    "default_parts",
    "design_lattice",
    "glue_generator",
    "lr_at",
    "nsm_loss",
    "part_lattice",
    "precise_nsm",
    "save_designed",
    "splice_generator",
]


@dataclass
class DesignConfig:
    """The settings of one lattice design: the ``lattice:`` node of ``experiment=lattice_design``
    (each field is ``lattice.<field>`` on the command line).

    Args:
        dim: lattice dimension ``n >= 1``.
        method: one of :data:`METHODS`.
        parts: spliced lattices (dimensions, names or generator files); ``None`` = the best pair
            (:func:`auto_parts`, or :data:`GLUE_PARTS` with ``glue``).
        reflections: Householder vectors (default ``n`` rounded up to even).
        init: ``free`` only: ``"random"`` or ``"splice"``.
        init_noise: scale of the random start of the fusion parameters.
        rebase: fusion only: at each reduction, ``base <- LLL(Q base)`` and ``Q <- I``.
        glue: start from the densest glued superlattice of the parts instead of their splice.
        glue_trials: restarts of the glue search.
        seed: seeds the initial parameters, the glue search, the samples and the final estimate.
        batch_size: uniform samples per step.
        lr: initial SGD step size, annealed as ``lr / (1 + t / anneal)``.
        anneal: annealing time in steps (``<= 0``: constant).
        momentum: SGD momentum.
        reduce_every: LLL-reduce the ``free`` basis (or rebase a fusion, with ``rebase``) every
            this many steps (0 = never).
        eval_samples: samples of the final NSM estimate.
    """

    dim: int
    method: str = "householder"
    parts: list[int | str] | None = None
    reflections: int | None = None
    init: str = "random"
    init_noise: float = 1e-3
    rebase: bool = False
    glue: bool = False
    glue_trials: int = 8
    seed: int = 0
    batch_size: int = 1024
    lr: float = 0.5
    anneal: float = 500.0
    momentum: float = 0.0
    reduce_every: int = 100
    eval_samples: int = 200_000

    def __post_init__(self) -> None:
        if self.parts is not None:
            self.parts = [str(p) if isinstance(p, Path) else p for p in self.parts]
        for key, low in (("batch_size", 1), ("eval_samples", 2), ("glue_trials", 1)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"lattice.{key} must be an integer >= {low}, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lattice.lr must be > 0, got {self.lr}")
        if self.init not in ("random", "splice"):
            raise ValueError(f"lattice.init={self.init!r}: choose 'random' or 'splice'")
        check_design(self.dim, self.method, self.parts, glue=self.glue, init=self.init)

    @classmethod
    def from_settings(cls, settings: DesignConfig | Mapping[str, Any], **overrides: Any
                      ) -> DesignConfig:
        """A config from a mapping (a Hydra ``lattice:`` node, a checkpoint's hyper-parameters)
        or another config, with ``overrides``; an unknown key is a ``ValueError`` naming it."""
        values = dataclasses.asdict(settings) if isinstance(settings, DesignConfig) else dict(settings)
        values.update(overrides)
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(k for k in values if k not in known)
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join('lattice.' + k for k in unknown)}; "
                             f"the lattice design settings are: {', '.join(known)}")
        if "dim" not in values:
            raise ValueError("lattice.dim is required (the lattice dimension)")
        if values.get("parts") is not None:
            values["parts"] = list(values["parts"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for ``save_hyperparameters`` and file metadata)."""
        return dataclasses.asdict(self)

    def parametrization(self) -> LatticeParametrization:
        """The :class:`LatticeParametrization` these settings start from."""
        return LatticeParametrization(self.dim, self.method, self.parts, self.reflections,
                                      self.init, init_noise=self.init_noise, rebase=self.rebase,
                                      seed=self.seed, glue=self.glue, glue_trials=self.glue_trials)


def lr_at(step: int, lr: float, anneal: float) -> float:
    """Annealed step size ``lr / (1 + step / anneal)`` (``anneal <= 0``: constant)."""
    return lr / (1.0 + step / anneal) if anneal > 0 else lr


class DesignStep:
    """One SGD step on the NSM: sample, decode exactly, backpropagate, anneal, renormalise, reduce.

    The one step of lattice design, run by :func:`design_lattice` (and so the benchmark) and by
    :class:`~llvq.modules.LatticeDesignModule` (``train.py``): the same settings and seed give
    the same lattice on both paths. Step ``t`` draws its samples from the seed ``(seed, t)``
    alone, so a resumed run draws what the uninterrupted one would.

    Args:
        param: the parametrization to train.
        config: the settings (``batch_size``, ``lr``, ``anneal``, ``momentum``,
            ``reduce_every``, ``seed``).
    """

    def __init__(self, param: LatticeParametrization, config: DesignConfig) -> None:
        self.param, self.config = param, config

    @property
    def trainable(self) -> bool:
        """Whether there is anything to learn (not for ``splice``)."""
        return any(True for _ in self.param.parameters())

    def optimizer(self) -> torch.optim.SGD | None:
        """A fresh SGD over the parameters, ``None`` when there are none (``splice``)."""
        if not self.trainable:
            return None
        return torch.optim.SGD(self.param.parameters(), lr=self.config.lr,
                               momentum=self.config.momentum)

    def samples(self, t: int) -> Tensor:
        """The ``(batch_size, n)`` uniform coordinates of step ``t`` (float64)."""
        rng = torch.Generator().manual_seed(self.config.seed * 1_000_003 + t)
        return torch.rand(self.config.batch_size, self.param.dim, generator=rng,
                          dtype=torch.float64)

    def lr(self, t: int) -> float:
        """The step size of step ``t``."""
        return lr_at(t, self.config.lr, self.config.anneal)

    def __call__(self, t: int, optimizer: Any = None,
                 backward: Callable[[Tensor], Any] | None = None) -> Tensor:
        """Run step ``t``; returns the batch NSM (detached).

        Args:
            t: the step index (completed steps so far).
            optimizer: the SGD of :meth:`optimizer` (or Lightning's wrapper of it); ``None``
                only estimates the NSM (``splice``).
            backward: how to backpropagate (Lightning's ``manual_backward``); default
                ``loss.backward()``.
        """
        loss = nsm_loss(self.param(), self.samples(t))
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["lr"] = self.lr(t)
            optimizer.zero_grad(set_to_none=True)
            (backward or Tensor.backward)(loss)
            optimizer.step()
            self.param.normalize_()
            if self.config.reduce_every > 0 and (t + 1) % self.config.reduce_every == 0:
                self.param.reduce_()
        return loss.detach()


@dataclass
class DesignResult:
    """What :func:`design_lattice` found: the generator, its NSM ± s.e., and the batch history."""

    generator: Tensor
    nsm: float
    se: float
    history: list[float] = field(default_factory=list)
    seconds: float = 0.0


def final_nsm(generator: Tensor, config: DesignConfig, samples: int | None = None
              ) -> tuple[float, float]:
    """The final NSM estimate ``(G, s.e.)`` of a design (``eval_samples`` samples, its own seed)."""
    return precise_nsm(generator, samples or config.eval_samples, seed=config.seed + 1_000_003)


def design_lattice(config: DesignConfig | int, method: str | None = None, steps: int = 2000, *,
                   callback: Callable[[int, float], None] | None = None,
                   **settings: Any) -> DesignResult:
    """Search a low-NSM lattice by SGD outside Lightning (the module runs the same
    :class:`DesignStep`).

    Args:
        config: a :class:`DesignConfig`, or the dimension; then ``method`` (default ``free``) and
            ``settings`` (any :class:`DesignConfig` field) complete it, with the defaults
            ``batch_size=512``, ``eval_samples=100_000`` and ``anneal=steps / 10``.
        method: overrides ``config.method``.
        steps: SGD steps (none for ``splice``: nothing to learn).
        callback: called as ``callback(step, batch_nsm)``.
        **settings: :class:`DesignConfig` fields overriding ``config``.
    """
    if isinstance(config, DesignConfig):
        cfg = DesignConfig.from_settings(config, **settings, **({"method": method} if method else {}))
    else:
        if settings.get("anneal") is None:
            settings["anneal"] = steps / 10
        defaults = {"method": method or "free", "batch_size": 512, "eval_samples": 100_000}
        cfg = DesignConfig.from_settings({**defaults, **settings}, dim=config)
    t0 = time.perf_counter()
    param = cfg.parametrization()
    step = DesignStep(param, cfg)
    optimizer = step.optimizer()
    history = []
    for t in range(steps if optimizer is not None else 0):
        value = float(step(t, optimizer))
        history.append(value)
        if callback is not None:
            callback(t, value)
    g = param().detach()
    value, se = final_nsm(g, cfg)
    return DesignResult(g, value, se, history, time.perf_counter() - t0)


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

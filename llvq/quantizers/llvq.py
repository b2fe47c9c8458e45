"""LL-VQ-VAE: a learnable diagonal lattice as the bottleneck.

Khalil, Piechocki & Santos-Rodriguez, "LL-VQ-VAE: Learnable Lattice Vector-Quantization for
Efficient Representations". The lattice is ``L(B) = {Bv : v ∈ Z^D}`` with a diagonal basis
``B`` (eq. 5), so Babai rounding ``v = round(B⁻¹ z)`` (eq. 4) is the exact nearest point.
The training objective (eq. 8) adds to the reconstruction term

    ‖sg[z] − Bv‖²  +  β‖z − sg[Bv]‖²  −  γ‖diag B‖₁                                     (8)

(embedding, commitment and size loss, eq. 7). The basis is initialised uniformly in
``±1/(K^(1/D) − 1)`` for a target codebook size ``K`` (appendix A.1, eq. 11).

Guard against a vanishing basis entry: the sign of a diagonal entry does not change the lattice,
so the basis is parametrised as ``diag B = |b_raw| + min_step``. Every entry stays at least
``min_step`` apart from zero while the gradient of the size loss keeps its paper form
(``∂(−γ‖B‖₁)/∂b_raw = −γ·sign(b_raw)``). ``min_step`` is a setting, logged as ``basis_min``.

Why the paper's setting spends 2-3 of 64 dimensions (issue 16, ``docs/autoencoder_bench.md``):
eq. 11 with ``K = 512, D = 64`` asks for ``512^(1/64) ≈ 1.10`` levels per coordinate, i.e. a
spacing drawn from ``U(0, 9.76)`` while the encoder's latents are O(1). Every coordinate whose
spacing exceeds twice its latent range rounds to 0 for all inputs; there ``v = 0``, so the
embedding-loss gradient ``Σ v (Bv − z)`` is exactly 0 and only the size loss acts, whose
gradient ``−γ`` is the same for every coordinate whatever it costs in distortion: the spacing
grows, the coordinate never comes back, and the commitment loss pulls its latents to 0.

The rate knob ``target_bits`` replaces the size loss: every spacing is ``2^c · |b_j|`` with one
global exponent ``c`` (a buffer, not a parameter) moved after each training step by
``c += rate_gain · log2(R / target_bits)``, where ``R`` is the batch's factorised code entropy
``Σ_j H(v_j)`` in bits per vector (the rate of a coder with one prior per coordinate; averaged
over ranks under DDP). The basis then starts at equal spacings, so all coordinates compete.

Notation: ``...`` leading axes, ``D`` the vector width (``dim``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llvq.quantizers._codebook import check_codebook_size, distributed, sum_over_ranks
from llvq.quantizers.base import Quantizer, QuantizerOutput, check_code_range, check_weight
from llvq.quantizers.registry import register

__all__ = ["DiagonalLatticeQuantizer", "basis_init_range", "marginal_entropy_bits"]


def basis_init_range(codebook_size: int, dim: int) -> float:
    """LL-VQ-VAE eq. 11: half-width ``1/(K^(1/D) − 1)`` of the uniform basis initialisation."""
    return 1.0 / (codebook_size ** (1.0 / dim) - 1.0)


def marginal_entropy_bits(v: Tensor) -> Tensor:
    """Plug-in entropy in bits of each column of integer codes ``v`` ``(N, D)``; ``(D,)``.

    Sort-based, with ``scatter_add`` instead of ``bincount``, so no host-device synchronisation.
    """
    n, d = v.shape
    s, _ = torch.sort(v, dim=0)  # (N, D)
    start = torch.ones_like(s, dtype=torch.bool)
    start[1:] = s[1:] != s[:-1]  # (N, D): first entry of each run of equal codes
    run = torch.cumsum(start.long(), dim=0) - 1  # (N, D): run id within its column
    slot = run + torch.arange(d, device=v.device) * n  # (N, D): unique per column and run
    counts = torch.zeros(n * d, device=v.device).scatter_add_(
        0, slot.reshape(-1), torch.ones(n * d, device=v.device)).view(d, n)  # (D, N)
    p = counts / max(n, 1)
    return -(p * torch.log2(p.clamp_min(1e-30))).sum(1)


@register("llvq")
class DiagonalLatticeQuantizer(Quantizer):
    """Learnable diagonal lattice with Babai rounding (LL-VQ-VAE).

    Args:
        dim: vector width ``D`` (the basis has ``D`` parameters).
        codebook_size: target codebook size ``K`` (≥ 2) that sets the initial range (eq. 11).
        beta: commitment weight β (>= 0).
        gamma: sparsity coefficient γ of the size loss: 1 pushes the lattice sparse (finite
            codebook), −1 dense (paper's "dense" variant), 0 switches it off.
        init_range: overrides the half-width of the uniform initialisation (e.g. 1.0 for the
            paper's Table 3 rows with range (−1, 1)); default derived from ``codebook_size``.
        init_basis: explicit initial diagonal (length ``D``, no zero entries); overrides the
            random initialisation.
        min_step: smallest allowed lattice spacing (see the module docstring).
        target_bits: the rate knob: bits per vector (factorised code entropy) the global
            spacing is steered to; replaces the size loss (needs ``gamma=0``) and starts from
            equal spacings (unless ``init_basis`` is given). ``None``: the paper's size loss.
        rate_gain: step of the spacing exponent per training step (log2 units per doubling
            of the rate error).
        check_every: check the basis for NaN/Inf on every call on CPU, every
            ``check_every`` training calls on other devices (the check synchronises).

    Raises:
        ValueError: in ``forward``/``encode``, when a code ``round(z / b)`` would exceed
            ``±2^53`` (:data:`~llvq.quantizers.base.MAX_CODE`; beyond it codes are not exact
            and soon overflow int64). Half-precision latents are coded in float32 and
            ``z_q`` is returned in the input's dtype.
    """

    vector_codes = True

    def __init__(self, dim: int, codebook_size: int = 512, beta: float = 0.25, gamma: float = 1.0,
                 init_range: float | None = None, init_basis: Sequence[float] | None = None,
                 min_step: float = 1e-3, target_bits: float | None = None,
                 rate_gain: float = 0.05, check_every: int = 100) -> None:
        super().__init__(dim)
        check_codebook_size(codebook_size, self.name)
        if min_step <= 0:
            raise ValueError(f"quantizer 'llvq': `min_step` must be > 0, got {min_step}")
        if target_bits is not None:
            if not target_bits > 0:
                raise ValueError(f"quantizer 'llvq': `target_bits` must be > 0, got {target_bits}")
            if gamma != 0:
                raise ValueError(f"quantizer 'llvq': `target_bits` replaces the size loss; set "
                                 f"gamma=0 (got gamma={gamma}) or target_bits=null")
            if not rate_gain > 0:
                raise ValueError(f"quantizer 'llvq': `rate_gain` must be > 0, got {rate_gain}")
        if not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"quantizer 'llvq': `check_every` must be an integer >= 1, "
                             f"got {check_every!r}")
        self.target_bits = None if target_bits is None else float(target_bits)
        self.rate_gain, self.check_every = float(rate_gain), check_every
        self._calls = 0
        # the lattice is unbounded: K is a target that sets the initial range, not a code size
        self.target_codebook_size, self.gamma = codebook_size, float(gamma)
        self.beta = check_weight(beta, "beta", self.name)
        self.min_step = float(min_step)
        if init_basis is not None:
            raw = torch.as_tensor(list(init_basis), dtype=torch.float32)
            if raw.shape != (dim,):
                raise ValueError(f"quantizer 'llvq': `init_basis` must have {dim} entries "
                                 f"(one per latent channel), got shape {tuple(raw.shape)}")
            if not bool(torch.isfinite(raw).all()) or bool((raw == 0).any()):
                raise ValueError("quantizer 'llvq': `init_basis` has a zero or non-finite entry; "
                                 "a lattice basis entry of 0 collapses that axis to one point")
            raw = raw.abs() - self.min_step
            if bool((raw < 0).any()):
                raise ValueError(f"quantizer 'llvq': `init_basis` entries must have |b| >= "
                                 f"min_step={self.min_step}")
        elif target_bits is not None:
            raw = torch.full((dim,), 1.0 - self.min_step)  # equal spacings 1; c sets the scale
        else:
            r = init_range if init_range is not None else basis_init_range(codebook_size, dim)
            if not r > 0:
                raise ValueError(f"quantizer 'llvq': `init_range` must be > 0, got {r}")
            raw = torch.empty(dim).uniform_(-r, r)
        self.basis_raw = nn.Parameter(raw)  # (D,)
        self.register_buffer("log2_spacing", torch.zeros(()))  # c: global exponent (rate knob)

    @property
    def basis(self) -> Tensor:
        """The diagonal of ``B``, shape ``(D,)``, every entry ≥ ``min_step`` (times ``2^c``)."""
        return (self.basis_raw.abs() + self.min_step) * self.log2_spacing.exp2()

    def _check_basis(self, b: Tensor) -> None:
        """Raise if the basis is non-finite: every call on CPU, periodically elsewhere."""
        self._calls += 1
        if b.device.type != "cpu" and (self._calls - 1) % self.check_every:
            return
        if not bool(torch.isfinite(b).all()):
            raise ValueError("quantizer 'llvq': the lattice basis became non-finite; "
                             "lower the learning rate")

    @torch.no_grad()
    def _steer_rate(self, rate: Tensor) -> None:
        """One step of the rate knob: ``c += rate_gain · log2(R / target_bits)``."""
        if distributed():
            rate = sum_over_ranks(rate.clone()) / torch.distributed.get_world_size()
        err = torch.log2(rate.clamp_min(1e-3) / self.target_bits)
        self.log2_spacing.add_(self.rate_gain * err)

    def quantize(self, z: Tensor) -> QuantizerOutput:
        b = self.basis  # (D,)
        self._check_basis(b)
        z_d, b_d = z.detach(), b.detach()
        if z.numel() == 0:  # an empty batch: empty codes, no loss (not a 0/0 NaN)
            return QuantizerOutput(z_q=z.clone(), codes=z_d.long(), loss=0.0 * b.sum())
        v = torch.round(z_d / b_d)  # (..., D) Babai rounding, eq. 4 (no gradient)
        check_code_range(v, self.name, "`min_step`")
        e = v * b_d  # (..., D) nearest lattice point Bv
        r = e - z_d  # (..., D) quantization residual
        # Embedding loss ‖sg[z] − Bv‖² (mean over entries). Its gradient w.r.t. b_j is
        # (2/N) Σ_i v_ij r_ij; written as value + (b − sg[b])·grad, so the backward pass is O(D)
        # instead of a broadcast product over every latent entry. Value and gradient are exact.
        grad_b = (v * r).reshape(-1, self.dim).sum(0) * (2.0 / r.numel())  # (D,)
        embedding = r.square().mean() + ((b - b_d) * grad_b).sum()
        commitment = F.mse_loss(z, e)  # β‖z − sg[Bv]‖²
        size = -self.gamma * b.sum()  # −γ‖diag B‖₁, eq. 7 (entries are positive)
        rate = marginal_entropy_bits(v.reshape(-1, self.dim)).sum()  # bits per vector
        z_q = z + r.to(z.dtype)  # straight-through: value Bv, identity gradient to z
        metrics = {
            "embedding_loss": embedding.detach(), "commitment": commitment.detach(),
            "size_loss": size.detach(), "basis_mean": b.detach().mean(),
            "basis_min": b.detach().min(), "code_absmax": v.abs().max(), "rate_bits": rate,
            "active_dims": (v != 0).reshape(-1, self.dim).any(0).sum().float(),
        }
        if self.training and self.target_bits is not None:
            self._steer_rate(rate)
        return QuantizerOutput(z_q=z_q, codes=v.long(), loss=embedding + self.beta * commitment + size,
                               metrics=metrics)

    def encode_impl(self, z: Tensor) -> Tensor:
        v = torch.round(z / self.basis)
        check_code_range(v, self.name, "`min_step`")
        return v.long()

    def decode(self, codes: Tensor) -> Tensor:
        return codes.to(self.basis.dtype) * self.basis

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, target_codebook_size={self.target_codebook_size}, beta={self.beta}, "
                f"gamma={self.gamma}, min_step={self.min_step}, target_bits={self.target_bits}")

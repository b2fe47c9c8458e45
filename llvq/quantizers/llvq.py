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

Notation: ``...`` leading axes, ``D`` the vector width (``dim``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llvq.quantizers._codebook import check_codebook_size
from llvq.quantizers.base import Quantizer, QuantizerOutput
from llvq.quantizers.registry import register

__all__ = ["DiagonalLatticeQuantizer", "basis_init_range"]


def basis_init_range(codebook_size: int, dim: int) -> float:
    """LL-VQ-VAE eq. 11: half-width ``1/(K^(1/D) − 1)`` of the uniform basis initialisation."""
    return 1.0 / (codebook_size ** (1.0 / dim) - 1.0)


@register("llvq")
class DiagonalLatticeQuantizer(Quantizer):
    """Learnable diagonal lattice with Babai rounding (LL-VQ-VAE).

    Args:
        dim: vector width ``D`` (the basis has ``D`` parameters).
        codebook_size: target codebook size ``K`` (≥ 2) that sets the initial range (eq. 11).
        beta: commitment weight β.
        gamma: sparsity coefficient γ of the size loss: 1 pushes the lattice sparse (finite
            codebook), −1 dense (paper's "dense" variant), 0 switches it off.
        init_range: overrides the half-width of the uniform initialisation (e.g. 1.0 for the
            paper's Table 3 rows with range (−1, 1)); default derived from ``codebook_size``.
        init_basis: explicit initial diagonal (length ``D``, no zero entries); overrides the
            random initialisation.
        min_step: smallest allowed lattice spacing (see the module docstring).
    """

    vector_codes = True

    def __init__(self, dim: int, codebook_size: int = 512, beta: float = 0.25, gamma: float = 1.0,
                 init_range: float | None = None, init_basis: Sequence[float] | None = None,
                 min_step: float = 1e-3) -> None:
        super().__init__(dim)
        check_codebook_size(codebook_size, self.name)
        if min_step <= 0:
            raise ValueError(f"quantizer 'llvq': `min_step` must be > 0, got {min_step}")
        # the lattice is unbounded: K is a target that sets the initial range, not a code size
        self.target_codebook_size, self.beta, self.gamma = codebook_size, float(beta), float(gamma)
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
        else:
            r = init_range if init_range is not None else basis_init_range(codebook_size, dim)
            if not r > 0:
                raise ValueError(f"quantizer 'llvq': `init_range` must be > 0, got {r}")
            raw = torch.empty(dim).uniform_(-r, r)
        self.basis_raw = nn.Parameter(raw)  # (D,)

    @property
    def basis(self) -> Tensor:
        """The diagonal of ``B``, shape ``(D,)``, every entry ≥ ``min_step``."""
        return self.basis_raw.abs() + self.min_step

    def quantize(self, z: Tensor) -> QuantizerOutput:
        b = self.basis  # (D,)
        if not bool(torch.isfinite(b).all()):
            raise ValueError("quantizer 'llvq': the lattice basis became non-finite; "
                             "lower the learning rate")
        z_d, b_d = z.detach(), b.detach()
        if z.numel() == 0:  # an empty batch: empty codes, no loss (not a 0/0 NaN)
            return QuantizerOutput(z_q=z.clone(), codes=z_d.long(), loss=0.0 * b.sum())
        v = torch.round(z_d / b_d)  # (..., D) Babai rounding, eq. 4 (no gradient)
        e = v * b_d  # (..., D) nearest lattice point Bv
        r = e - z_d  # (..., D) quantization residual
        # Embedding loss ‖sg[z] − Bv‖² (mean over entries). Its gradient w.r.t. b_j is
        # (2/N) Σ_i v_ij r_ij; written as value + (b − sg[b])·grad, so the backward pass is O(D)
        # instead of a broadcast product over every latent entry. Value and gradient are exact.
        grad_b = (v * r).reshape(-1, self.dim).sum(0) * (2.0 / r.numel())  # (D,)
        embedding = r.square().mean() + ((b - b_d) * grad_b).sum()
        commitment = F.mse_loss(z, e)  # β‖z − sg[Bv]‖²
        size = -self.gamma * b.sum()  # −γ‖diag B‖₁, eq. 7 (entries are positive)
        z_q = z + r  # straight-through: value Bv, identity gradient to z
        metrics = {
            "embedding_loss": embedding.detach(), "commitment": commitment.detach(),
            "size_loss": size.detach(), "basis_mean": b.detach().mean(),
            "basis_min": b.detach().min(), "code_absmax": v.abs().max(),
        }
        return QuantizerOutput(z_q=z_q, codes=v.long(), loss=embedding + self.beta * commitment + size,
                               metrics=metrics)

    def encode_impl(self, z: Tensor) -> Tensor:
        return torch.round(z / self.basis).long()

    def decode(self, codes: Tensor) -> Tensor:
        return codes.to(self.basis.dtype) * self.basis

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, target_codebook_size={self.target_codebook_size}, beta={self.beta}, "
                f"gamma={self.gamma}, min_step={self.min_step}")

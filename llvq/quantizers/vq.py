"""VQ-VAE codebook quantizer (van den Oord et al., 2017, eq. 3), made not to collapse.

Two standard remedies are on by default: k-means initialisation of the codebook on the first
training batch (Zeghidour et al. 2021) and restarting codewords that fall out of use at
random encoder outputs (Dhariwal et al. 2020). Without them the codebook of the LL-VQ-VAE
paper's setting collapses to ~10 of 512 codes on ``photos`` (issue 16). The rotation trick
(Fifty et al. 2024) is an optional gradient estimator in place of the straight-through one.

Notation: ``...`` leading axes, ``d`` vector width, ``K`` codebook size, ``N`` flattened vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llvq.quantizers._codebook import (
    check_codebook_size,
    kmeans,
    nearest_codeword,
    restart_dead,
    rotate_to,
    sum_over_ranks,
    usage_metrics,
)
from llvq.quantizers.base import Quantizer, QuantizerOutput, check_weight
from llvq.quantizers.registry import register

__all__ = ["VectorQuantizer"]


@register("vq")
class VectorQuantizer(Quantizer):
    """A learned ``K × d`` codebook.

    Loss (VQ-VAE eq. 3 without the reconstruction term):
    ``‖sg[z] − e‖² + β‖z − sg[e]‖²``.

    Args:
        dim: vector width ``d``.
        codebook_size: number of codewords ``K`` (≥ 2).
        beta: commitment weight β (>= 0).
        kmeans_init: set the codebook by k-means on the first training batch (rank 0's under
            DDP); otherwise the paper's uniform ``±1/K`` initialisation.
        restart_dead_codes: move codewords whose averaged usage falls below
            ``dead_code_threshold`` to random encoder outputs of the current batch.
        dead_code_threshold: averaged uses per batch (all ranks) below which a code is dead.
        usage_decay: decay of the usage average.
        rotation_trick: pass gradients with the rotation trick instead of straight through.

    Latents of another float dtype (half, bfloat16, float64) are coded in the codebook's dtype;
    ``z_q`` comes back in the input's dtype.
    """

    def __init__(self, dim: int, codebook_size: int = 512, beta: float = 0.25,
                 kmeans_init: bool = True, restart_dead_codes: bool = True,
                 dead_code_threshold: float = 1.0, usage_decay: float = 0.99,
                 rotation_trick: bool = False) -> None:
        super().__init__(dim)
        check_codebook_size(codebook_size, self.name)
        if not 0.0 < usage_decay < 1.0:
            raise ValueError(f"quantizer 'vq': `usage_decay` must lie in (0, 1), got {usage_decay}")
        self.codebook_size = codebook_size
        self.beta = check_weight(beta, "beta", self.name)
        self.kmeans_init, self.restart_dead_codes = bool(kmeans_init), bool(restart_dead_codes)
        self.dead_code_threshold, self.usage_decay = float(dead_code_threshold), float(usage_decay)
        self.rotation_trick = bool(rotation_trick)
        self.codebook = nn.Parameter(
            torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size))
        usage = torch.full((codebook_size,), self.dead_code_threshold)  # (K,) uses per batch
        self.register_buffer("usage", usage)
        self.register_buffer("initialized", torch.tensor(not self.kmeans_init))
        self._initialized: bool | None = None  # host copy of `initialized`, read once

    def _maybe_init(self, flat: Tensor) -> None:
        if self._initialized is None:
            self._initialized = bool(self.initialized)  # one sync per process, then cached
        if self._initialized:
            return
        with torch.no_grad():
            self.codebook.copy_(kmeans(flat, self.codebook_size))
            self.initialized.fill_(True)
        self._initialized = True

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._initialized = None  # re-read the loaded flag

    def quantize(self, z: Tensor) -> QuantizerOutput:
        flat = z.reshape(-1, self.dim).to(self.codebook.dtype)  # (N, d), in the codebook's dtype
        if self.training and flat.shape[0] > 0:
            self._maybe_init(flat.detach())
        idx = nearest_codeword(flat.detach(), self.codebook.detach())  # (N,)
        e = self.codebook[idx]  # (N, d)
        codebook_loss = F.mse_loss(e, flat.detach())
        commitment = F.mse_loss(flat, e.detach())
        if self.rotation_trick:
            z_q = rotate_to(flat, e).view_as(z).to(z.dtype)
        else:
            z_q = z + (e.view_as(z).to(z.dtype) - z).detach()  # straight-through
        metrics = {"codebook_loss": codebook_loss.detach(), "commitment": commitment.detach(),
                   **usage_metrics(idx, self.codebook_size)}
        if self.training and self.restart_dead_codes and flat.shape[0] > 0:
            metrics["restarted"] = self._restart(flat.detach(), idx)
        return QuantizerOutput(z_q=z_q, codes=idx.view(z.shape[:-1]),
                               loss=codebook_loss + self.beta * commitment, metrics=metrics)

    @torch.no_grad()
    def _restart(self, flat: Tensor, idx: Tensor) -> Tensor:
        counts = sum_over_ranks(torch.bincount(idx, minlength=self.codebook_size).float())  # (K,)
        self.usage.mul_(self.usage_decay).add_(counts, alpha=1 - self.usage_decay)
        return restart_dead(self.codebook.data, self.usage, flat, self.dead_code_threshold)

    def encode_impl(self, z: Tensor) -> Tensor:
        flat = z.reshape(-1, self.dim).to(self.codebook.dtype)  # (N, d)
        return nearest_codeword(flat, self.codebook).view(z.shape[:-1])

    def decode(self, codes: Tensor) -> Tensor:
        return F.embedding(codes, self.codebook)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, codebook_size={self.codebook_size}, beta={self.beta}, "
                f"kmeans_init={self.kmeans_init}, restart_dead_codes={self.restart_dead_codes}, "
                f"rotation_trick={self.rotation_trick}")

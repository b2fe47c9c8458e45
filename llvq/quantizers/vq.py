"""VQ-VAE codebook quantizer (van den Oord et al., 2017, eq. 3).

Notation: ``...`` leading axes, ``d`` vector width, ``K`` codebook size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llvq.quantizers._codebook import check_codebook_size, nearest_codeword, usage_metrics
from llvq.quantizers.base import Quantizer, QuantizerOutput
from llvq.quantizers.registry import register

__all__ = ["VectorQuantizer"]


@register("vq")
class VectorQuantizer(Quantizer):
    """A learned ``K × d`` codebook with the straight-through estimator.

    Loss (VQ-VAE eq. 3 without the reconstruction term):
    ``‖sg[z] − e‖² + β‖z − sg[e]‖²``.

    Args:
        dim: vector width ``d``.
        codebook_size: number of codewords ``K`` (≥ 2).
        beta: commitment weight β.
    """

    def __init__(self, dim: int, codebook_size: int = 512, beta: float = 0.25) -> None:
        super().__init__(dim)
        check_codebook_size(codebook_size, self.name)
        self.codebook_size = codebook_size
        self.beta = float(beta)
        self.codebook = nn.Parameter(
            torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size))

    def quantize(self, z: Tensor) -> QuantizerOutput:
        flat = z.reshape(-1, self.dim)  # (N, d)
        idx = nearest_codeword(flat.detach(), self.codebook.detach())  # (N,)
        e = self.codebook[idx].view_as(z)  # (..., d)
        codebook_loss = F.mse_loss(e, z.detach())
        commitment = F.mse_loss(z, e.detach())
        z_q = z + (e - z).detach()  # straight-through
        metrics = {"codebook_loss": codebook_loss.detach(), "commitment": commitment.detach(),
                   **usage_metrics(idx, self.codebook_size)}
        return QuantizerOutput(z_q=z_q, codes=idx.view(z.shape[:-1]),
                               loss=codebook_loss + self.beta * commitment, metrics=metrics)

    def encode_impl(self, z: Tensor) -> Tensor:
        return nearest_codeword(z.reshape(-1, self.dim), self.codebook).view(z.shape[:-1])

    def decode(self, codes: Tensor) -> Tensor:
        return F.embedding(codes, self.codebook)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, codebook_size={self.codebook_size}, beta={self.beta}"

"""VQ-VAE with a codebook learned by exponential moving averages.

van den Oord et al. (2017), appendix A.1: cluster sizes ``N_k`` and sums ``m_k`` are tracked
with decay γ; codewords are ``e_k = m_k / N_k`` with Laplace smoothing of ``N``. Codewords
whose averaged usage falls below a threshold can be restarted at random encoder outputs
(Dhariwal et al., 2020). Under DDP the statistics are summed over ranks so every replica keeps
the same codebook.

Notation: ``...`` leading axes, ``d`` vector width, ``K`` codebook size, ``N`` flattened vectors.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from llvq.quantizers._codebook import check_codebook_size, nearest_codeword, usage_metrics
from llvq.quantizers.base import Quantizer, QuantizerOutput
from llvq.quantizers.registry import register

__all__ = ["EMAVectorQuantizer"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@register("vq_ema")
class EMAVectorQuantizer(Quantizer):
    """Codebook updated by EMA instead of gradients; the loss is β·commitment only.

    Args:
        dim: vector width ``d``.
        codebook_size: number of codewords ``K`` (≥ 2).
        beta: commitment weight β.
        decay: EMA decay γ in (0, 1).
        epsilon: Laplace smoothing constant for the cluster sizes.
        restart_dead_codes: replace codewords whose EMA usage falls below
            ``dead_code_threshold`` with random encoder outputs of the current batch.
        dead_code_threshold: EMA cluster size (expected uses per batch) below which a
            codeword counts as dead.
    """

    def __init__(self, dim: int, codebook_size: int = 512, beta: float = 0.25,
                 decay: float = 0.99, epsilon: float = 1e-5, restart_dead_codes: bool = False,
                 dead_code_threshold: float = 1.0) -> None:
        super().__init__(dim)
        check_codebook_size(codebook_size, self.name)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"quantizer 'vq_ema': `decay` must lie in (0, 1), got {decay}")
        if epsilon <= 0:
            raise ValueError(f"quantizer 'vq_ema': `epsilon` must be > 0, got {epsilon}")
        self.codebook_size = codebook_size
        self.beta, self.decay, self.epsilon = float(beta), float(decay), float(epsilon)
        self.restart_dead_codes = bool(restart_dead_codes)
        self.dead_code_threshold = float(dead_code_threshold)
        codebook = torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        self.register_buffer("codebook", codebook)  # (K, d)
        self.register_buffer("cluster_size", torch.ones(codebook_size))  # (K,)
        self.register_buffer("embed_sum", codebook.clone())  # (K, d)

    def quantize(self, z: Tensor) -> QuantizerOutput:
        flat = z.detach().reshape(-1, self.dim)  # (N, d)
        idx = nearest_codeword(flat, self.codebook)  # (N,)
        e = F.embedding(idx, self.codebook).view_as(z)  # (..., d)
        commitment = F.mse_loss(z, e)
        metrics = {"commitment": commitment.detach(), **usage_metrics(idx, self.codebook_size)}
        if self.training:
            metrics["restarted"] = self._ema_update(flat, idx)
        z_q = z + (e - z).detach()  # straight-through
        return QuantizerOutput(z_q=z_q, codes=idx.view(z.shape[:-1]),
                               loss=self.beta * commitment, metrics=metrics)

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, idx: Tensor) -> Tensor:
        counts = torch.bincount(idx, minlength=self.codebook_size).to(flat.dtype)  # (K,)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, idx, flat)  # (K, d)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (n + self.codebook_size * self.epsilon) * n
        self.codebook.copy_(self.embed_sum / smoothed.unsqueeze(1))
        if not self.restart_dead_codes:
            return flat.new_zeros(())
        return self._restart(flat)

    def _restart(self, flat: Tensor) -> Tensor:
        dead = self.cluster_size < self.dead_code_threshold  # (K,)
        num_dead = int(dead.sum())
        if num_dead == 0:
            return flat.new_zeros(())
        pick = torch.randint(0, flat.shape[0], (num_dead,), device=flat.device)
        fresh = flat[pick]  # (num_dead, d)
        if _distributed():  # every rank takes rank 0's draw so codebooks stay identical
            dist.broadcast(fresh, src=0)
        self.codebook[dead] = fresh
        self.embed_sum[dead] = fresh * self.dead_code_threshold
        self.cluster_size[dead] = self.dead_code_threshold
        return flat.new_tensor(float(num_dead))

    def encode_impl(self, z: Tensor) -> Tensor:
        return nearest_codeword(z.reshape(-1, self.dim), self.codebook).view(z.shape[:-1])

    def decode(self, codes: Tensor) -> Tensor:
        return F.embedding(codes, self.codebook)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, codebook_size={self.codebook_size}, beta={self.beta}, "
                f"decay={self.decay}, restart_dead_codes={self.restart_dead_codes}")

"""VQ-VAE with a codebook learned by exponential moving averages, made not to collapse.

van den Oord et al. (2017), appendix A.1: cluster sizes ``N_k`` and sums ``m_k`` are tracked
with decay γ; codewords are ``e_k = m_k / N_k`` with Laplace smoothing of ``N``. By default the
codebook starts from k-means on the first training batch and codewords whose averaged usage
falls below a threshold are restarted at random encoder outputs (Dhariwal et al., 2020);
without both the paper's setting keeps ~8 of 512 codes on ``photos`` (issue 16). Under DDP the
statistics are summed over ranks and draws are rank 0's, so every replica keeps the same codebook.

Notation: ``...`` leading axes, ``d`` vector width, ``K`` codebook size, ``N`` flattened vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from llvq.quantizers._codebook import (
    check_codebook_size,
    kmeans,
    nearest_codeword,
    restart_dead,
    rotate_to,
    sum_over_ranks,
    usage_metrics,
)
from llvq.quantizers.base import Quantizer, QuantizerOutput, check_weight, deferred
from llvq.quantizers.registry import register

__all__ = ["EMAVectorQuantizer"]


@register("vq_ema")
class EMAVectorQuantizer(Quantizer):
    """Codebook updated by EMA instead of gradients; the loss is β·commitment only.

    Args:
        dim: vector width ``d``.
        codebook_size: number of codewords ``K`` (≥ 2).
        beta: commitment weight β (>= 0).
        decay: EMA decay γ in (0, 1).
        epsilon: Laplace smoothing constant for the cluster sizes.
        kmeans_init: set the codebook by k-means on the first training batch (rank 0's under
            DDP); otherwise the paper's uniform ``±1/K`` initialisation.
        restart_dead_codes: replace codewords whose EMA usage falls below
            ``dead_code_threshold`` with random encoder outputs of the current batch.
        dead_code_threshold: EMA cluster size (expected uses per batch, all ranks) below which
            a codeword counts as dead.
        rotation_trick: pass gradients with the rotation trick instead of straight through.

    The codebook never absorbs Inf/NaN: non-finite latents are refused before any update
    (``ValueError`` from :func:`~llvq.quantizers.base.check_latents`), and finite latents so
    large that the k-means start or the running sums would overflow raise ``ValueError`` with
    the codebook and its statistics left as they were (an error, not a skipped update). Latents
    of another float dtype (half, bfloat16, float64) are coded in the codebook's dtype; ``z_q``
    comes back in the input's dtype.
    """

    def __init__(self, dim: int, codebook_size: int = 512, beta: float = 0.25,
                 decay: float = 0.99, epsilon: float = 1e-5, kmeans_init: bool = True,
                 restart_dead_codes: bool = True, dead_code_threshold: float = 1.0,
                 rotation_trick: bool = False) -> None:
        super().__init__(dim)
        check_codebook_size(codebook_size, self.name)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"quantizer 'vq_ema': `decay` must lie in (0, 1), got {decay}")
        if epsilon <= 0:
            raise ValueError(f"quantizer 'vq_ema': `epsilon` must be > 0, got {epsilon}")
        self.codebook_size = codebook_size
        self.beta = check_weight(beta, "beta", self.name)
        self.decay, self.epsilon = float(decay), float(epsilon)
        self.kmeans_init, self.restart_dead_codes = bool(kmeans_init), bool(restart_dead_codes)
        self.dead_code_threshold = float(dead_code_threshold)
        self.rotation_trick = bool(rotation_trick)
        codebook = torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        self.register_buffer("codebook", codebook)  # (K, d)
        self.register_buffer("cluster_size", torch.ones(codebook_size))  # (K,)
        self.register_buffer("embed_sum", codebook.clone())  # (K, d)
        self.register_buffer("initialized", torch.tensor(not self.kmeans_init))
        self._initialized: bool | None = None  # host copy of `initialized`, read once

    def _maybe_init(self, flat: Tensor) -> None:
        if self._initialized is None:
            self._initialized = bool(self.initialized)  # one sync per process, then cached
        if self._initialized:
            return
        with torch.no_grad():
            start = self._finite(kmeans(flat, self.codebook_size), "the k-means start", flat)
            self.codebook.copy_(start)
            self.embed_sum.copy_(self.codebook)  # cluster_size 1: e_k = m_k / 1
            self.cluster_size.fill_(1.0)
            self.initialized.fill_(True)
        self._initialized = True

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._initialized = None  # re-read the loaded flag

    def quantize(self, z: Tensor) -> QuantizerOutput:
        flat = z.detach().reshape(-1, self.dim).to(self.codebook.dtype)  # (N, d)
        if self.training and flat.shape[0] > 0:
            self._maybe_init(flat)
        idx = nearest_codeword(flat, self.codebook)  # (N,)
        e = F.embedding(idx, self.codebook)  # (N, d)
        commitment = F.mse_loss(z.reshape(-1, self.dim), e.to(z.dtype))
        metrics = {"commitment": commitment.detach(), **usage_metrics(idx, self.codebook_size)}
        if self.training and flat.shape[0] > 0:
            metrics["restarted"] = self._ema_update(flat, idx)
        if self.rotation_trick:
            z_q = rotate_to(z.reshape(-1, self.dim), e.to(z.dtype)).view_as(z)
        else:
            z_q = z + (e.view_as(z).to(z.dtype) - z).detach()  # straight-through
        return QuantizerOutput(z_q=z_q, codes=idx.view(z.shape[:-1]),
                               loss=self.beta * commitment, metrics=metrics)

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, idx: Tensor) -> Tensor:
        counts = sum_over_ranks(torch.bincount(idx, minlength=self.codebook_size).to(flat.dtype))
        sums = sum_over_ranks(torch.zeros_like(self.embed_sum).index_add_(0, idx, flat))  # (K, d)
        embed_sum = torch.add(self.embed_sum * self.decay, sums, alpha=1 - self.decay)  # (K, d)
        if deferred(flat):  # GPU: no sync; a non-finite update is undone on the device instead
            ok = torch.isfinite(embed_sum).all()
            self.guard(~ok, f"quantizer '{self.name}': the running codeword sums overflowed to "
                            f"Inf/NaN and the EMA codebook update was skipped; the latents are "
                            f"far too large for {self.codebook.dtype} sums -- lower the learning "
                            f"rate or normalise the latents")
            state = (self.cluster_size, self.embed_sum, self.codebook)
            before = [t.clone() for t in state]
            restarted = self._ema_apply(flat, counts, embed_sum)
            for t, old in zip(state, before):
                t.copy_(torch.where(ok, t, old))
            return restarted
        self._finite(embed_sum, "the running codeword sums", flat)  # before anything changes
        return self._ema_apply(flat, counts, embed_sum)

    def _ema_apply(self, flat: Tensor, counts: Tensor, embed_sum: Tensor) -> Tensor:
        """Move the running statistics and the codebook one EMA step; restart dead codes."""
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.copy_(embed_sum)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (n + self.codebook_size * self.epsilon) * n
        self.codebook.copy_(self.embed_sum / smoothed.unsqueeze(1))
        if not self.restart_dead_codes:
            return flat.new_zeros(())
        dead = self.cluster_size < self.dead_code_threshold  # (K,)
        restarted = restart_dead(self.codebook, self.cluster_size, flat, self.dead_code_threshold)
        # a restarted code k keeps e_k = m_k / N_k with N_k = threshold
        self.embed_sum.copy_(torch.where(dead[:, None], self.codebook * self.dead_code_threshold,
                                         self.embed_sum))
        return restarted

    def _finite(self, t: Tensor, what: str, flat: Tensor) -> Tensor:
        """``t``, or a ``ValueError`` if it holds Inf/NaN (latents too large for the sums)."""
        if not bool(torch.isfinite(t).all()):
            raise ValueError(
                f"quantizer '{self.name}': {what} overflowed to Inf/NaN; the EMA codebook was left "
                f"unchanged. The latents reach {float(flat.abs().max()):.3g}, far too large for "
                f"{self.codebook.dtype} sums -- lower the learning rate or normalise the latents")
        return t

    def encode_impl(self, z: Tensor) -> Tensor:
        flat = z.reshape(-1, self.dim).to(self.codebook.dtype)  # (N, d)
        return nearest_codeword(flat, self.codebook).view(z.shape[:-1])

    def decode(self, codes: Tensor) -> Tensor:
        return F.embedding(codes, self.codebook)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, codebook_size={self.codebook_size}, beta={self.beta}, "
                f"decay={self.decay}, kmeans_init={self.kmeans_init}, "
                f"restart_dead_codes={self.restart_dead_codes}")

"""Helpers shared by the finite-codebook quantizers (``vq``, ``vq_ema``)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_codebook_size", "nearest_codeword", "usage_metrics"]


def check_codebook_size(codebook_size: int, name: str) -> None:
    """Raise if ``codebook_size`` is not an integer ≥ 2."""
    if not isinstance(codebook_size, int) or isinstance(codebook_size, bool) or codebook_size < 2:
        raise ValueError(f"quantizer '{name}': `codebook_size` must be an integer >= 2, "
                         f"got {codebook_size!r} (set model.quantizer.codebook_size)")


def nearest_codeword(flat: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest codeword for each row.

    Args:
        flat: ``(N, d)`` vectors.
        codebook: ``(K, d)`` codewords.

    Returns:
        ``(N,)`` int64 indices minimising ``‖flat - codebook[k]‖²``.
    """
    # ‖x‖² is constant per row, so argmin over (‖e‖² - 2 x·e) suffices: one (N, K) matmul.
    scores = torch.addmm(codebook.pow(2).sum(1), flat, codebook.t(), alpha=-2.0)  # (N, K)
    return scores.argmin(dim=1)


def usage_metrics(indices: Tensor, codebook_size: int) -> dict[str, Tensor]:
    """Batch usage statistics: perplexity exp(H) and the fraction of codewords used."""
    counts = torch.bincount(indices.reshape(-1), minlength=codebook_size).float()
    probs = counts / counts.sum().clamp_min(1.0)
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
    return {"perplexity": entropy.exp(), "used_fraction": (counts > 0).float().mean()}

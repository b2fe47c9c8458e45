"""Usage statistics of a table of code counts (imports nothing from llvq).

Shared by the codebook-utilization callback and the code export. With ``p_k = count_k / N``
over the ``N`` latent vectors counted:

    entropy  H = −Σ p_k log2 p_k        bits per latent vector
    perplexity = 2^H                    the effective number of codes in use
    dead fraction = 1 − distinct / K    finite codebooks of size K only
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["usage_stats"]


def usage_stats(counts: Tensor, codebook_size: int | None = None) -> dict[str, float]:
    """Usage statistics of a table of code counts.

    Args:
        counts: ``(V,)`` occurrences of each distinct code (zeros allowed).
        codebook_size: ``K`` of a finite codebook; adds ``dead_fraction`` when given.

    Returns:
        ``vectors`` (N), ``distinct``, ``entropy_bits`` (bits per latent vector),
        ``perplexity`` (2^H) and, for finite codebooks, ``dead_fraction``.
    """
    counts = counts[counts > 0].to(torch.float64)
    total = float(counts.sum())
    if total == 0:
        entropy = 0.0
    else:
        p = counts / total
        entropy = float(-(p * torch.log2(p)).sum())
    stats = {"vectors": total, "distinct": float(counts.numel()), "entropy_bits": entropy,
             "perplexity": 2.0 ** entropy}
    if codebook_size is not None:
        stats["dead_fraction"] = 1.0 - counts.numel() / codebook_size
    return stats

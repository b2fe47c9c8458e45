"""Helpers shared by the finite-codebook quantizers (``vq``, ``vq_ema``).

k-means initialisation, dead-code restart and the rotation-trick gradient; each is DDP-safe
(what differs between ranks — a k-means result, a draw of fresh codewords — is taken from rank
0, what is counted is summed) and none synchronises host and device on the training path.

Notation: ``N`` flattened vectors, ``d`` vector width, ``K`` codebook size.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["broadcast_from_rank0", "check_codebook_size", "distributed", "kmeans",
           "nearest_codeword", "restart_dead", "rotate_to", "sum_over_ranks", "usage_metrics"]


def check_codebook_size(codebook_size: int, name: str) -> None:
    """Raise if ``codebook_size`` is not an integer ≥ 2."""
    if not isinstance(codebook_size, int) or isinstance(codebook_size, bool) or codebook_size < 2:
        raise ValueError(f"quantizer '{name}': `codebook_size` must be an integer >= 2, "
                         f"got {codebook_size!r} (set model.quantizer.codebook_size)")


def distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_from_rank0(t: Tensor) -> Tensor:
    """Every rank takes rank 0's ``t`` (in place); a no-op outside DDP."""
    if distributed():
        dist.broadcast(t, src=0)
    return t


def sum_over_ranks(t: Tensor) -> Tensor:
    """All-reduce (sum) ``t`` in place; a no-op outside DDP."""
    if distributed():
        dist.all_reduce(t)
    return t


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


@torch.no_grad()
def kmeans(flat: Tensor, k: int, iters: int = 10) -> Tensor:
    """Lloyd's k-means on ``flat`` ``(N, d)``, started from ``k`` random rows; ``(k, d)``.

    With ``N < k`` rows are drawn with replacement; an empty cluster keeps its centre. Under
    DDP every rank computes its own and takes rank 0's result, so codebooks stay identical
    (Zeghidour et al. 2021 and vector-quantize-pytorch initialise the same way).
    """
    flat = flat.detach().float()
    n = flat.shape[0]
    start = torch.randperm(n, device=flat.device)[:k] if n >= k else \
        torch.randint(0, n, (k,), device=flat.device)
    centres = flat[start].clone()  # (k, d)
    for _ in range(iters):
        idx = nearest_codeword(flat, centres)  # (N,)
        counts = torch.bincount(idx, minlength=k).to(flat.dtype)  # (k,)
        sums = torch.zeros_like(centres).index_add_(0, idx, flat)  # (k, d)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
    return broadcast_from_rank0(centres.contiguous())


@torch.no_grad()
def restart_dead(codebook: Tensor, usage: Tensor, flat: Tensor, threshold: float) -> Tensor:
    """Replace codewords whose averaged usage is below ``threshold`` by random rows of ``flat``.

    Dhariwal et al. (2020, Jukebox): a dead code is moved to a current encoder output. Done with
    ``torch.where`` on a fresh draw for every code, so no host–device synchronisation; the draw
    is rank 0's under DDP (``usage`` must already be summed over ranks).

    Args:
        codebook: ``(K, d)`` codewords, changed in place.
        usage: ``(K,)`` averaged uses per batch; restarted codes are set to ``threshold``.
        flat: ``(N, d)`` encoder outputs of this batch.
        threshold: the usage below which a code counts as dead.

    Returns:
        The number of restarted codes (a 0-d tensor).
    """
    dead = usage < threshold  # (K,)
    pick = torch.randint(0, flat.shape[0], (codebook.shape[0],), device=flat.device)
    fresh = broadcast_from_rank0(flat[pick].to(codebook.dtype).contiguous())  # (K, d)
    codebook.copy_(torch.where(dead[:, None], fresh, codebook))
    usage.copy_(torch.where(dead, usage.new_tensor(threshold), usage))
    return dead.sum().to(flat.dtype)


def rotate_to(z: Tensor, e: Tensor) -> Tensor:
    """The rotation trick (Fifty et al. 2024, eq. 4-5): the value of ``e``, the gradient of a
    fixed rotation-and-rescaling of ``z`` onto ``e`` (instead of the identity of the
    straight-through estimator).

    Args:
        z: ``(N, d)`` encoder outputs (with gradient).
        e: ``(N, d)`` their codewords (detached inside).
    """
    e = e.detach()
    zn, en = z.detach().norm(dim=-1, keepdim=True), e.norm(dim=-1, keepdim=True)  # (N, 1)
    u = z.detach() / zn.clamp_min(1e-12)  # (N, d)
    q = e / en.clamp_min(1e-12)  # (N, d)
    w = F.normalize(u + q, dim=-1)  # (N, d): a Householder pair maps u to q
    zw, zu = (z * w).sum(-1, keepdim=True), (z * u).sum(-1, keepdim=True)
    rotated = z - 2 * zw * w + 2 * zu * q  # (N, d) = R z, R u = q
    return rotated * (en / zn.clamp_min(1e-12))


def usage_metrics(indices: Tensor, codebook_size: int) -> dict[str, Tensor]:
    """Batch usage statistics: perplexity exp(H) and the fraction of codewords used."""
    counts = torch.bincount(indices.reshape(-1), minlength=codebook_size).float()
    probs = counts / counts.sum().clamp_min(1.0)
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
    return {"perplexity": entropy.exp(), "used_fraction": (counts > 0).float().mean()}

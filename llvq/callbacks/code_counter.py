"""Exact counts of the integer codes a quantizer emits (statistics: :mod:`llvq.code_stats`).

A *code* is what one latent vector quantizes to: an index ``k`` for a finite codebook
(``vector_codes = False``) or an integer lattice vector ``u ∈ Z^D`` (``vector_codes = True``,
LL-VQ-VAE's "embeddings per dataset" counts distinct ``u``). Codes are kept as rows of an int64
table ``(V, w)`` (``w = 1`` for indices, ``D`` for lattice vectors) with a count per row;
``torch.unique(dim=0)`` over int64 rows is exact (no hashing, no collisions).

Statistics (``p_k = count_k / N`` over the ``N`` latent vectors seen):

    entropy  H = −Σ p_k log2 p_k        bits per latent vector
    perplexity = 2^H = exp(H_nats)      the effective number of codes in use
    dead fraction = 1 − distinct / K    finite codebooks of size K only
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from llvq.code_stats import usage_stats

__all__ = ["CodeCounter", "usage_stats"]


def _merge(rows: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Collapse duplicate rows of ``rows (n, w)``, summing their ``counts (n,)``."""
    if rows.shape[0] == 0:
        return rows, counts
    uniq, inverse = torch.unique(rows, dim=0, return_inverse=True)  # (V, w), (n,)
    summed = torch.zeros(uniq.shape[0], dtype=torch.int64).index_add_(0, inverse, counts)
    return uniq, summed


class CodeCounter:
    """Accumulates exact code counts batch by batch; mergeable across DDP ranks.

    Args:
        vector_codes: True when codes are ``(..., D)`` lattice vectors, False for ``(...)`` indices.
        codebook_size: ``K`` of a finite codebook (for ``dead_fraction``), else None.
    """

    def __init__(self, vector_codes: bool, codebook_size: int | None = None) -> None:
        self.vector_codes = vector_codes
        self.codebook_size = codebook_size
        self.rows = torch.zeros(0, 0, dtype=torch.int64)  # (V, w) distinct codes
        self.counts = torch.zeros(0, dtype=torch.int64)  # (V,)
        self._pending: list[tuple[Tensor, Tensor]] = []

    def update(self, codes: Tensor) -> None:
        """Count the codes of one batch: ``(..., D)`` lattice vectors or ``(...)`` indices."""
        if codes.is_floating_point():
            raise TypeError(f"CodeCounter counts integer codes, got dtype {codes.dtype}")
        flat = codes.reshape(-1, codes.shape[-1]) if self.vector_codes else codes.reshape(-1, 1)
        rows, counts = torch.unique(flat.detach().to("cpu", torch.int64), dim=0,
                                    return_counts=True)
        self._pending.append((rows, counts))

    def _flush(self) -> None:
        if not self._pending:
            return
        parts = ([(self.rows, self.counts)] if self.rows.numel() else []) + self._pending
        self.rows, self.counts = _merge(torch.cat([r for r, _ in parts]),
                                        torch.cat([c for _, c in parts]))
        self._pending = []

    def table(self) -> tuple[Tensor, Tensor]:
        """Distinct codes ``(V, w)`` (lexicographic order) and their counts ``(V,)``."""
        self._flush()
        return self.rows, self.counts

    def reset(self) -> None:
        """Forget every count."""
        self.rows = torch.zeros(0, 0, dtype=torch.int64)
        self.counts = torch.zeros(0, dtype=torch.int64)
        self._pending = []

    def all_reduce(self) -> None:
        """Sum the counts of every DDP rank into each rank (no-op without a process group).

        Ranks hold different numbers of distinct codes, so the tables travel with
        ``all_gather_object`` and are merged exactly; every rank ends with the same table.
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        gathered: list[tuple[Tensor, Tensor] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self.table())
        parts = [p for p in gathered if p is not None and p[0].numel()]
        if parts:
            self.rows, self.counts = _merge(torch.cat([r for r, _ in parts]),
                                            torch.cat([c for _, c in parts]))

    def stats(self) -> dict[str, float]:
        """:func:`usage_stats` of the counts so far."""
        return usage_stats(self.table()[1], self.codebook_size)

    def state_dict(self) -> dict[str, Tensor]:
        rows, counts = self.table()
        return {"rows": rows.clone(), "counts": counts.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.rows, self.counts = state["rows"].to(torch.int64), state["counts"].to(torch.int64)
        self._pending = []

    def __len__(self) -> int:
        return int(self.table()[0].shape[0])


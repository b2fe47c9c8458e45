"""How much of the codebook (or lattice) a model uses, per validation epoch.

Over each validation epoch the callback re-encodes every batch with ``pl_module.encode(x)``
and counts the codes exactly (:class:`~llvq.callbacks.code_counter.CodeCounter`): for a finite
codebook the indices, for a lattice the distinct integer vectors — the LL-VQ-VAE paper's
"embeddings/dataset". At the epoch end the counts are summed over DDP ranks and logged as

    val/codebook/distinct       distinct codes used
    val/codebook/perplexity     2^H, the effective number of codes
    val/codebook/entropy_bits   H, bits per latent vector
    val/codebook/dead_fraction  1 − distinct/K (finite codebooks only)

plus a usage histogram (codes by frequency rank) to TensorBoard. ``measure(model, loader)``
gives the same statistics over a whole dataset on demand. The per-epoch history and the last
epoch's counts live in the checkpoint, so a resumed run continues them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from llvq.callbacks._common import batch_images, log, quantizer_of, tensorboard
from llvq.callbacks.code_counter import CodeCounter

__all__ = ["CodebookUtilization"]


def _new_counter(pl_module: Any) -> CodeCounter | None:
    q = quantizer_of(pl_module)
    if q is None or not q.integer_codes:
        return None
    size = None if q.vector_codes else q.codebook_size
    return CodeCounter(vector_codes=q.vector_codes, codebook_size=size)


class CodebookUtilization(Callback):
    """Distinct codes, perplexity, entropy and dead codes over each validation epoch.

    Args:
        histogram: also log the usage histogram to TensorBoard (when a TensorBoard logger exists).
        prefix: metric name prefix.
    """

    def __init__(self, histogram: bool = True, prefix: str = "val/codebook") -> None:
        self.histogram = histogram
        self.prefix = prefix
        self.history: list[dict[str, float]] = []
        self.counter: CodeCounter | None = None
        self._skipped = False

    # --- on demand ------------------------------------------------------------------------
    @staticmethod
    @torch.no_grad()
    def measure(pl_module: Any, batches: Iterable[Any]) -> dict[str, float]:
        """Usage statistics of ``pl_module``'s codes over every batch of ``batches`` (a loader).

        Args:
            pl_module: a module with ``encode(x)`` and a ``quantizer`` with integer codes.
            batches: ``(x, y)`` batches, e.g. a whole dataset's DataLoader.
        """
        counter = _new_counter(pl_module)
        if counter is None:
            raise ValueError(f"{type(pl_module).__name__} has no integer codes to count "
                             "(it needs encode()/decode() and a quantizer other than 'identity')")
        device = next(pl_module.parameters()).device
        for batch in batches:
            counter.update(pl_module.encode(batch_images(batch).to(device)))
        return counter.stats()

    # --- during validation ----------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.counter = None if trainer.sanity_checking else _new_counter(pl_module)
        if self.counter is None and not trainer.sanity_checking and not self._skipped:
            self._skipped = True
            log.info("CodebookUtilization: %s has no integer codes to count; skipped",
                     type(pl_module).__name__)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if self.counter is not None:
            self.counter.update(pl_module.encode(batch_images(batch)))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.counter is None:
            return
        self.counter.all_reduce()
        stats = self.counter.stats()
        stats.pop("vectors")
        self.history.append({"epoch": float(trainer.current_epoch),
                             "step": float(trainer.global_step), **stats})
        for name, value in stats.items():
            # identical on every rank after all_reduce; sync_dist only keeps Lightning's DDP
            # bookkeeping uniform (the mean of equal values is the value)
            pl_module.log(f"{self.prefix}/{name}", value, on_epoch=True, sync_dist=True)
        if self.histogram:
            self._log_histogram(trainer)

    @rank_zero_only
    def _log_histogram(self, trainer: L.Trainer) -> None:
        writer = tensorboard(trainer)
        if writer is None or self.counter is None or not len(self.counter):
            return
        counts = self.counter.table()[1].sort(descending=True).values.to(torch.float64)  # (V,)
        ranks = torch.arange(counts.numel(), dtype=torch.float64)
        total = counts.sum()
        writer.add_histogram_raw(
            f"{self.prefix}/usage_by_rank", min=0.0, max=float(counts.numel() - 1),
            num=float(total), sum=float((ranks * counts).sum()),
            sum_squares=float((ranks.square() * counts).sum()),
            bucket_limits=(ranks + 0.5).tolist(), bucket_counts=counts.tolist(),
            global_step=trainer.global_step)

    # --- checkpoint -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"history": [dict(h) for h in self.history]}
        if self.counter is not None:
            state["counter"] = self.counter.state_dict()
            state["vector_codes"] = self.counter.vector_codes
            state["codebook_size"] = self.counter.codebook_size
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]
        if "counter" in state_dict:
            self.counter = CodeCounter(state_dict["vector_codes"], state_dict["codebook_size"])
            self.counter.load_state_dict(state_dict["counter"])

    def last_counts(self) -> tuple[Tensor, Tensor] | None:
        """The last validation epoch's distinct codes ``(V, w)`` and counts ``(V,)``."""
        return None if self.counter is None else self.counter.table()

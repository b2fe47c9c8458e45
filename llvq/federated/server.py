"""The server's part of a round: validate, decompress and average the updates (FedAvg)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from llvq.federated.compressors import Compressor
from llvq.federated.payload import Payload, PayloadError

__all__ = ["RoundSums", "receive"]


@dataclass
class RoundSums:
    """Running sums of a round (all-reduced across ranks as one vector).

    ``weighted`` is ``sum_u n_u h_u``; the rest are scalars (``learned`` and ``gain_db`` sum
    OLALa's client-side statistics: clients that sent a learned lattice and its gain over ``G0``).
    """

    weighted: Tensor
    stats: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("weight", "answered", "dropped", "rejected", "bits", "blocks", "overloaded",
         "signal", "noise", "learned", "gain_db"), 0.0))

    def as_vector(self) -> Tensor:
        return torch.cat([self.weighted.double(), torch.tensor(list(self.stats.values()), dtype=torch.float64)])

    def load_vector(self, v: Tensor) -> None:
        p = self.weighted.numel()
        self.weighted = v[:p].clone()
        self.stats = dict(zip(self.stats, v[p:].tolist(), strict=True))


def receive(sums: RoundSums, compressor: Compressor, payload: Payload, seed: int, weight: float,
            h_true: Tensor | None = None, reasons: list[str] | None = None) -> bool:
    """Decompress one payload into ``sums``; a payload failing validation is counted, not used.

    Args:
        reasons: when given, the reason of a rejection is appended to it (for the log).

    Returns:
        Whether the payload was accepted.
    """
    numel = sums.weighted.numel()
    sums.stats["bits"] += int(payload.bits)  # sent, whether or not the server accepts it
    try:
        h_hat = compressor.decompress(payload, seed, numel).double()
        if not bool(torch.isfinite(h_hat).all()):
            raise PayloadError("decompressed update has non-finite values")
    except PayloadError as err:
        sums.stats["rejected"] += 1
        if reasons is not None:
            reasons.append(str(err))
        return False
    s = sums.stats
    sums.weighted += weight * h_hat
    s["weight"] += weight
    s["answered"] += 1
    s["blocks"] += payload.blocks
    s["overloaded"] += payload.overloaded
    s["learned"] += float(payload.stats.get("learned", 0.0))
    s["gain_db"] += float(payload.stats.get("gain_db", 0.0))
    if h_true is not None:
        s["signal"] += float(h_true.double().pow(2).sum())
        s["noise"] += float((h_hat - h_true.double()).pow(2).sum())
    return True

"""Per-client rates from a total bit budget: uniform, or FPLD log-tilted water-filling.

FPLD (heterogeneous-bandwidth allocation): ``B_i = B_tot / K + (V/2) log2(w_i / w_g)`` with
``w_g`` the geometric mean of the client weights ``w_i`` and ``V`` the length of the vector
each client sends (here the number of model parameters ``P``). Like reverse water-filling,
a client whose share would be negative gets nothing and the level is raised for the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["allocate_rates", "fpld_allocation"]


def fpld_allocation(total_bits: float, weights: Sequence[float], vector_len: int) -> list[float]:
    """Bits per client ``B_i = max(0, theta + (V/2) log2 w_i)``, ``theta`` so that they sum to ``B_tot``.

    Without clipping ``theta = B_tot/K - (V/2) log2 w_g``: the closed form of the FPLD rule.
    """
    if total_bits <= 0 or any(w <= 0 for w in weights):
        raise ValueError("fpld_allocation needs total_bits > 0 and positive client weights")
    tilt = [0.5 * vector_len * math.log2(w) for w in weights]
    lo, hi = -max(tilt), total_bits - min(tilt)
    for _ in range(200):
        theta = 0.5 * (lo + hi)
        if sum(max(0.0, theta + t) for t in tilt) > total_bits:
            hi = theta
        else:
            lo = theta
    return [max(0.0, lo + t) for t in tilt]


def allocate_rates(rate: float, weights: Sequence[float], vector_len: int, block: int,
                   rule: str = "uniform") -> list[float]:
    """Rates ``R_u`` (bits per coordinate) of a budget of ``rate * P * U`` bits.

    Rates are rounded down to multiples of ``1 / block`` (so ``R_u * L`` index bits are whole)
    and are at least ``1 / block``; the total never exceeds the budget unless that floor binds.

    Args:
        rate: the mean rate ``R``.
        weights: client weights (data sizes).
        vector_len: ``P``, coordinates per update.
        block: ``L``, the sub-vector length of the compressor.
        rule: ``uniform`` or ``fpld``.
    """
    if rule == "uniform":
        return [float(rate)] * len(weights)
    if rule != "fpld":
        raise ValueError(f"unknown rate allocation '{rule}'; use uniform or fpld (model.allocation)")
    bits = fpld_allocation(rate * vector_len * len(weights), weights, vector_len)
    return [max(1.0, math.floor(b / vector_len * block)) / block for b in bits]

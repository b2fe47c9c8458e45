"""Bit widths per group of one layer: salience-driven allocation under an exact budget."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["allocate_bits"]


def allocate_bits(salience: Tensor, budget_bits: float, group_numel: int,
                  estimate: dict[int, Tensor] | None = None, min_bits: int = 1,
                  max_bits: int = 8) -> Tensor:
    """Integer bit width per group with total code bits ``<= budget_bits``.

    With ``estimate`` (salience-driven allocation): groups are ranked by ``salience``; the top
    ``k`` get ``N + 1`` bits and the bottom ``k`` get ``N - 1``, ``N`` the integer nearest the
    average code bits the budget allows, with
    ``k`` chosen to minimise the estimated error ``sum_g estimate[b_g][g]`` (``k = 0`` allowed,
    so the average stays ``N``). Without it every group gets ``N``. Then the budget is filled:
    while a whole group's worth of bits is left, the most salient ``N``-bit group is promoted
    (fractional targets such as 1.5 bits); while over budget, the least salient group is
    demoted (this pays for the side information).

    Args:
        salience: ``(M,)``, larger = more important.
        budget_bits: code bits available for this layer.
        group_numel: weights per group.
        estimate: ``{bits: (M,) error}`` for ``N - 1``, ``N`` and ``N + 1`` (optional).
        min_bits, max_bits: limits of a group's width.

    Raises:
        ValueError: when the budget is below ``min_bits`` for every group.
    """
    m = salience.numel()
    avg = budget_bits / (m * group_numel)
    if avg < min_bits:
        raise ValueError(
            f"the bit budget leaves {avg:.3f} code bits per weight after side information; "
            f"at least model.bits >= {min_bits} code bit per weight is needed (raise model.bits, "
            f"or lower the side information with a larger model.glvq.group_size)")
    n = int(min(max(math.floor(avg + 0.5), min_bits), max_bits))  # the width nearest the average
    order = torch.argsort(salience, descending=True, stable=True)
    bits = torch.full((m,), n, dtype=torch.int64)
    if estimate is not None and n - 1 >= min_bits and n + 1 <= max_bits \
            and all(b in estimate for b in (n - 1, n, n + 1)):
        best_k, best_cost = 0, float(estimate[n].sum())
        for k in range(1, m // 2 + 1):
            top, bottom = order[:k], order[m - k:]
            cost = (float(estimate[n].sum()) + float((estimate[n + 1] - estimate[n])[top].sum())
                    + float((estimate[n - 1] - estimate[n])[bottom].sum()))
            if cost < best_cost:
                best_k, best_cost = k, cost
        bits[order[:best_k]] = n + 1
        bits[order[m - best_k:]] = n - 1
    left = budget_bits - float(bits.sum()) * group_numel
    for g in order.tolist():  # promote the most salient groups while whole groups fit
        if left < group_numel:
            break
        if bits[g] == n and n + 1 <= max_bits:
            bits[g] += 1
            left -= group_numel
    for g in reversed(order.tolist()):  # demote the least salient while over budget
        if left >= 0:
            break
        if bits[g] > min_bits and bits[g] >= n:
            bits[g] -= 1
            left += group_numel
    if left < 0:
        for g in reversed(order.tolist()):
            while left < 0 and bits[g] > min_bits:
                bits[g] -= 1
                left += group_numel
    return bits

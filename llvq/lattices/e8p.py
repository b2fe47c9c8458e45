"""The E8P codebook (QuIP#): 65,536 points of ``E8 + 1/4``, 16 bits per 8 coordinates.

**Codebook.** 65,536 points of the shifted lattice ``E8 + 1/4``, 16 bits per 8 weights:

- 256 *absolute patterns* ``a`` with half-odd-integer entries: the 227 elements of
  ``|D8 + 1/2|`` with squared norm at most 10, and 29 of the 56 patterns with five entries
  3/2 and three 1/2 (squared norm 12), picked so that every coordinate holds 3/2 about equally
  often (QuIP# picks 29 of the same 56 by its own rule);
- signs ``s``: any pattern whose signed sum ``sum s_i a_i`` is even, so that ``s * a`` lies in
  ``D8 + 1/2`` (a coset of ``D8`` inside ``E8``); the signs of coordinates 0-6 are stored and
  the last one follows from the parity (7 bits);
- a shift of ``+1/4`` or ``-1/4`` on every coordinate (1 bit); both land in ``E8 + 1/4``,
  since ``1/2 * ones`` is in ``E8``.

A code is ``abs_index * 256 + sign_bits * 2 + shift_bit``; :func:`decode` is a lookup in the
``(65536, 8)`` table :func:`codebook`.

**Nearest point** (:func:`nearest`), exact and without scanning the table: for each shift,
with ``z = x - shift``, the best signs for pattern ``a`` are ``sign(z)`` when their parity is
right, else ``sign(z)`` with the coordinate of least ``|z_i| a_i`` flipped, which costs
``4 |z_i| a_i`` more; so the distance to the best point of each of the 2 x 256 (shift,
pattern) pairs is ``||z| - a|^2`` plus that penalty, and the least of the 512 wins. On the CPU
a compiled kernel runs this search (:mod:`llvq.lattices._ce8p`); elsewhere, or without a C
compiler, batched torch code does, bounding the penalty to skip most patterns.

**Digits.** Where a code has to fit a contract of ``d`` codes of ``b`` bits per vector (the
``glvq`` quantizer with ``codebook="e8p"``, GLVQ's export), the 16-bit code is written as 8
base-4 digits, least significant first (:func:`to_digits`, :func:`from_digits`): 2 bits per
coordinate, exactly the code's size.

The LLM pieces built on it (BlockLDLQ, the ``e8p`` baseline) are in :mod:`llvq.llm.e8p`.
"""

from __future__ import annotations

import functools
import itertools

import torch
from torch import Tensor

from llvq.lattices import _ce8p

__all__ = ["CODE_BITS", "DIM", "MAX_NORM2", "abs_patterns", "codebook", "decode", "from_digits",
           "nearest", "to_digits"]

DIM = 8
CODE_BITS = 16


@functools.cache
def abs_patterns() -> Tensor:
    """``(256, 8)`` the absolute patterns (half-odd integers), in a fixed order."""
    small: list[tuple[float, ...]] = []
    for v in itertools.product((0.5, 1.5, 2.5), repeat=DIM):
        if sum(x * x for x in v) <= 10:
            small.append(v)
    small.sort(key=lambda v: (sum(x * x for x in v), tuple(-x for x in v)))
    if len(small) != 227:  # pragma: no cover - a property of D8 + 1/2
        raise AssertionError(f"expected 227 patterns of norm^2 <= 10, got {len(small)}")
    # 29 of the 56 patterns with five 3/2: greedily, the one whose 3/2 entries sit where 3/2
    # has been used least so far (ties: first in lexicographic order)
    five = [tuple(1.5 if i in c else 0.5 for i in range(DIM))
            for c in itertools.combinations(range(DIM), 5)]
    used = [0] * DIM
    picked: list[tuple[float, ...]] = []
    for _ in range(29):
        best = min((p for p in five if p not in picked),
                   key=lambda p: sum(used[i] for i in range(DIM) if p[i] == 1.5))
        picked.append(best)
        for i in range(DIM):
            used[i] += best[i] == 1.5
    return torch.tensor(small + picked, dtype=torch.float32)


def _odd(a: Tensor) -> Tensor:
    """``2a`` as integers (odd)."""
    return torch.round(2 * a).to(torch.int64)


@functools.cache
def codebook() -> Tensor:
    """``(65536, 8)`` float32: the point of every code (see the module doc for the layout)."""
    a = abs_patterns()  # (256, 8)
    bits = torch.arange(128)
    neg7 = ((bits[:, None] >> torch.arange(7)) & 1).bool()  # (128, 7)
    o = _odd(a)  # (256, 8)
    s7 = 1 - 2 * neg7.to(torch.int64)  # (128, 7)
    partial = s7 @ o[:, :7].T  # (128, 256): sum of the first 7 signed odd entries
    # the last sign makes sum s_i o_i = 0 mod 4 (o_7 is odd, so exactly one sign works)
    last_pos = torch.remainder(partial + o[:, 7][None, :], 4) == 0  # (128, 256)
    s8 = torch.where(last_pos, 1, -1)
    signs = torch.cat([s7[:, None, :].expand(128, 256, 7), s8[..., None]], -1)  # (128, 256, 8)
    pts = signs.float() * a[None]  # (128, 256, 8)
    pts = pts.transpose(0, 1).reshape(256 * 128, 1, DIM)  # index abs * 128 + sign bits
    shift = torch.tensor([0.25, -0.25]).view(1, 2, 1)
    return (pts + shift).reshape(65536, DIM).contiguous()


def decode(codes: Tensor) -> Tensor:
    """The points ``(..., 8)`` of integer codes ``(...)``."""
    return codebook().to(codes.device)[codes.long()]


def _best_pattern(az: Tensor, neg: Tensor, a: Tensor, o: Tensor, a_sq: Tensor,
                  top: int) -> tuple[Tensor, Tensor, Tensor]:
    """For one shift: the least distance over the 256 patterns, its pattern and final signs.

    The parity penalty ``4 min_i |z_i| a_i`` is computed exactly only for the ``top`` patterns
    of least lower bound (``a_i >= 1/2``, so the penalty is at least ``2 min_i |z_i|``); rows
    where a pattern outside those could still win are recomputed over all 256.
    """
    n = az.shape[0]
    base = az.pow(2).sum(1, keepdim=True) - 2 * az @ a.T + a_sq  # (n, 256)
    wrong = torch.remainder(torch.round((1.0 - 2.0 * neg.float()) @ o.T), 4) != 0
    lower = base + wrong * (2 * az.amin(1, keepdim=True))
    lb, idx = torch.topk(lower, top + 1, dim=1, largest=False)
    cand = idx[:, :top]
    pen, flip = (az[:, None, :] * a[cand]).min(-1)  # (n, top)
    total = base.gather(1, cand) + wrong.gather(1, cand) * 4 * pen
    cost, k = total.min(1)
    rows = torch.arange(n, device=az.device)
    j, flip_at = cand[rows, k], flip[rows, k]
    redo = lb[:, top] < cost  # a pattern outside the candidates may be closer
    if bool(redo.any()):
        r = rows[redo]
        pen_all, flip_all = (az[r, None, :] * a[None]).min(-1)
        tot_all = base[r] + wrong[r] * 4 * pen_all
        cost[r], j[r] = tot_all.min(1)
        flip_at[r] = flip_all[torch.arange(r.numel(), device=az.device), j[r]]
    final_neg = neg.clone()
    fix = wrong[rows, j]
    final_neg[rows[fix], flip_at[fix]] ^= True
    return cost, j, final_neg


@torch.no_grad()
def nearest(x: Tensor, chunk: int = 8192, top: int = 12) -> tuple[Tensor, Tensor]:
    """Nearest E8P point of each row of ``x`` ``(N, 8)``: ``(codes (N,) int64, points (N, 8))``."""
    if x.shape[-1] != DIM:
        raise ValueError(f"E8P codes 8-dimensional vectors, got shape {tuple(x.shape)}")
    if _ce8p.usable(x):  # CPU: the compiled search, same result
        codes = _ce8p.nearest_codes(x, abs_patterns())
        return codes, decode(codes).to(x.dtype)
    a = abs_patterns().to(x.device)
    o = _odd(a).float()
    a_sq = a.pow(2).sum(1)
    weights = 1 << torch.arange(7, device=x.device)
    codes = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for c0 in range(0, x.shape[0], chunk):
        xc = x[c0:c0 + chunk].float()
        best_cost = best_code = None
        for shift_bit, t in enumerate((0.25, -0.25)):
            z = xc - t
            cost, j, final_neg = _best_pattern(z.abs(), z < 0, a, o, a_sq, top)
            code = j * 256 + (final_neg[:, :7].long() * weights).sum(1) * 2 + shift_bit
            if best_cost is None:
                best_cost, best_code = cost, code
            else:
                take = cost < best_cost
                best_cost = torch.where(take, cost, best_cost)
                best_code = torch.where(take, code, best_code)
        codes[c0:c0 + chunk] = best_code
    return codes, decode(codes).to(x.dtype)


_DIGIT_WEIGHTS = 4 ** torch.arange(DIM)


def to_digits(codes: Tensor) -> Tensor:
    """Codes ``(...)`` in ``[0, 65536)`` as base-4 digits ``(..., 8)``, least significant first."""
    return (codes.long()[..., None] // _DIGIT_WEIGHTS.to(codes.device)) % 4


def from_digits(digits: Tensor) -> Tensor:
    """The inverse of :func:`to_digits`: ``(..., 8)`` digits in ``[0, 4)`` to codes ``(...)``."""
    return (digits.long() * _DIGIT_WEIGHTS.to(digits.device)).sum(-1)


#: the largest squared norm of a codebook point
MAX_NORM2 = float(codebook().pow(2).sum(1).max())

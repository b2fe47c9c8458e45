"""GPTQ (Frantar et al., 2023) for one weight matrix, as a calibrated LLM baseline.

The algorithm of the reference implementation (IST-DASLab ``gptq.py`` / ``quant.py``), in
plain PyTorch on CPU:

- ``H`` is the input second moment of the layer on the calibration tokens (its scale does not
  matter); columns with ``H_jj = 0`` are zeroed; ``damp`` (1 %) of the mean diagonal is added;
- the upper Cholesky factor ``U`` of ``H^-1`` drives the optimal-brain-surgeon updates: columns
  are quantized left to right (or in decreasing ``H_jj`` with ``act_order``), each column's
  error divided by ``U_jj`` is folded into the columns after it, lazily in blocks of
  ``block_size`` (128) columns;
- the grid is asymmetric min-max per output row and group of ``group_size`` columns, with the
  range widened to include 0 (as the reference's ``Quantizer.find_params``); a group's scale
  and zero are found when the first column of the group is reached, from the columns as the
  earlier errors left them (with ``static_groups`` they are found up front from the original
  weight instead).

One deliberate difference: for a group that starts inside a lazy block, the reference reads
the group's columns from the copy of ``W`` that the block's pending updates have not reached
yet; here the group's parameters come from the updated columns. A width that ``group_size``
does not divide (SmolLM2's 576 with 128) ends in a shorter group, as in the reference.

Bits are counted as GPTQ's packed format stores them: ``bits`` per code, a float16 scale and a
``bits``-wide zero per row and group, and with ``act_order`` (without ``static_groups``) an
int32 group index per input column, which the permuted groups need. The scale is rounded to
float16 before it is used, so the weight returned is exactly the stored model's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llvq.llm.baselines import LLM_BASELINES, BaselineOutput, check_bits
from llvq.llm.groups import inverse_cholesky

__all__ = ["GPTQBaseline", "gptq_quantize", "gptq_storage_bits"]


def _grid(x: Tensor, maxq: int) -> tuple[Tensor, Tensor]:
    """Asymmetric min-max scale (float16-rounded) and integer zero per row of ``x``."""
    zeros = torch.zeros(x.shape[0], dtype=x.dtype)
    lo = torch.minimum(x.amin(1), zeros)
    hi = torch.maximum(x.amax(1), zeros)
    flat = (lo == 0) & (hi == 0)
    lo[flat], hi[flat] = -1.0, 1.0
    scale = ((hi - lo) / maxq).to(torch.float16).float()
    scale = torch.where(scale > 0, scale, torch.full_like(scale, 2.0 ** -24))
    zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def _quant(x: Tensor, scale: Tensor, zero: Tensor, maxq: int) -> Tensor:
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


def gptq_storage_bits(out: int, cols: int, bits: int, group_size: int,
                      group_index: bool) -> int:
    """Bits of one layer in GPTQ's packed format (codes, fp16 scales, packed zeros, g_idx).

    A width that ``group_size`` does not divide ends in a shorter group (as in the reference).
    """
    groups = out * -(-cols // group_size)
    return out * cols * bits + groups * (16 + bits) + (32 * cols if group_index else 0)


@torch.no_grad()
def gptq_quantize(w: Tensor, h: Tensor, bits: int, group_size: int = 128, damp: float = 0.01,
                  block_size: int = 128, act_order: bool = False,
                  static_groups: bool = False, name: str = "layer") -> tuple[Tensor, int]:
    """GPTQ of one ``(out, in)`` weight from its input second moment ``h`` (``(in, in)``).

    Returns the dequantized weight (float32, the original column order) and the bits the layer
    takes as stored (:func:`gptq_storage_bits`).
    """
    out, cols = w.shape
    if h.shape != (cols, cols):
        raise ValueError(f"'{name}': H is {tuple(h.shape)}, the weight has {cols} input columns")
    if group_size < 1:
        raise ValueError(f"GPTQ group_size must be >= 1, got {group_size}")
    if not 0 <= damp < 1:
        raise ValueError(f"GPTQ damp must be in [0, 1), got {damp}")
    if block_size < 1:
        raise ValueError(f"GPTQ block_size must be >= 1, got {block_size}")
    maxq = 2**bits - 1
    W = w.detach().float().clone()
    H = h.detach().float().clone()
    dead = H.diagonal() <= 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    static: list[tuple[Tensor, Tensor]] = []
    if static_groups:
        static = [_grid(W[:, g:g + group_size], maxq) for g in range(0, cols, group_size)]
    perm = None
    if act_order:
        perm = torch.argsort(H.diagonal(), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    H.diagonal().add_(damp * H.diagonal().mean())
    hinv = inverse_cholesky(H)
    Q = torch.zeros_like(W)
    scale = zero = None
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        E1 = torch.zeros_like(W1)
        H1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if static_groups:
                g = int(perm[col]) if perm is not None else col
                scale, zero = static[g // group_size]
            elif col % group_size == 0:
                end = col + group_size
                group = torch.cat([W1[:, i:i + group_size], W[:, i2:max(i2, end)]], dim=1)
                scale, zero = _grid(group[:, :group_size], maxq)
            x = W1[:, i]
            q = _quant(x, scale, zero, maxq)
            Q1[:, i] = q
            err = (x - q) / H1[i, i]
            W1[:, i:] -= err[:, None] * H1[i, i:][None, :]
            E1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= E1 @ hinv[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    stored = gptq_storage_bits(out, cols, bits, group_size, act_order and not static_groups)
    return Q, stored


@LLM_BASELINES.register("gptq")
class GPTQBaseline:
    """GPTQ as an LLM baseline (:func:`gptq_quantize`); it needs each layer's ``H``.

    ``calibrated = True``: it is called as ``baseline(w, h)`` by
    :func:`llvq.llm.ptq.quantize_with_baseline`, which walks the decoder blocks in order on the
    calibration windows (each block sees the outputs of the already-quantized ones, as in GPTQ).

    Args:
        bits: code bits (1 to 8).
        group_size: input columns per scale and zero.
        damp: dampening, a fraction of the mean diagonal of ``H``.
        block_size: columns per lazy batch.
        act_order: quantize columns in decreasing ``H_jj``.
        static_groups: group parameters from the original weight, in the original order.
    """

    calibrated = True

    def __init__(self, bits: int, group_size: int = 128, damp: float = 0.01,
                 block_size: int = 128, act_order: bool = False,
                 static_groups: bool = False) -> None:
        if not 0 <= damp < 1 or block_size < 1 or group_size < 1:
            raise ValueError(f"LLM baseline 'gptq': need 0 <= damp < 1, block_size >= 1 and "
                             f"group_size >= 1, got {damp}, {block_size}, {group_size}")
        self.bits = check_bits("gptq", bits, tuple(range(1, 9)))
        self.group_size = group_size
        self.damp = damp
        self.block_size = block_size
        self.act_order = act_order
        self.static_groups = static_groups

    def __call__(self, w: Tensor, h: Tensor) -> BaselineOutput:
        w_hat, stored = gptq_quantize(w, h, self.bits, self.group_size, self.damp,
                                      self.block_size, self.act_order, self.static_groups)
        return BaselineOutput(weight=w_hat, bits=float(stored))

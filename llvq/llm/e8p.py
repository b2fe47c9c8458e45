"""The E8P codebook (QuIP#) and BlockLDLQ: 2 bits per weight with 8-dimensional lattice codes.

**Codebook** (:mod:`llvq.lattices.e8p`, re-exported here): 65,536 points of ``E8 + 1/4``,
16 bits per 8 weights, with an exact nearest-point search.

**BlockLDLQ** (:func:`block_ldlq`): GPTQ's column-by-column error feedback with blocks of 8
columns, as QuIP# quantizes with a vector codebook: block ``b``'s error ``E_b`` is folded
into the columns after it by ``W_rest -= E_b U_bb^-1 U_b,rest``, ``U`` the upper Cholesky
factor of ``H^-1``, lazily in batches of 128 columns.

**Baseline** ``e8p`` (:class:`E8PBaseline`, in ``LLM_BASELINES``): QuIP#'s quantizer without
its fine-tuning — incoherence processing (:mod:`llvq.llm.incoherence`), a float16 scale per
layer (searched on the layer's output error) and optionally per row, E8P codes by BlockLDLQ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from llvq.lattices.e8p import CODE_BITS, DIM, abs_patterns, codebook, decode, nearest
from llvq.llm.baselines import LLM_BASELINES, BaselineOutput, check_bits
from llvq.llm.groups import SIDE_BITS, SIDE_DTYPE, inverse_cholesky
from llvq.llm.incoherence import layer_seed, rotate, unrotate

__all__ = ["E8PBaseline", "E8PLayer", "abs_patterns", "block_ldlq", "codebook", "decode", "e8p_quantize",
           "nearest"]

#: the scale multiples tried per layer, relative to the Gaussian-fitted default (RMS / 1.03)
SCALE_GRID = (0.8, 0.9, 1.0, 1.1, 1.2)


@torch.no_grad()
def block_ldlq(w: Tensor, h: Tensor, quant, damp: float = 0.01, lazy: int = 128,
               name: str = "layer") -> tuple[Tensor, Tensor]:
    """BlockLDLQ of ``w`` ``(out, in)`` with blocks of 8 columns.

    Args:
        w: the weight (``in`` a multiple of 8).
        h: ``(in, in)`` input second moment.
        quant: ``quant(x (out, 8), b) -> (codes (out,), x_hat (out, 8))`` for block ``b``.
        damp: ``H + damp * mean(diag H) * I`` before inverting.
        lazy: columns per lazy batch (a multiple of 8).

    Returns:
        ``(codes (out, in / 8) int64, dequantized weight (out, in) float32)``.
    """
    out, cols = w.shape
    if cols % DIM:
        raise ValueError(f"'{name}': E8P needs an input width divisible by 8, got {cols}")
    if h.shape != (cols, cols):
        raise ValueError(f"'{name}': H is {tuple(h.shape)}, the weight has {cols} input columns")
    W = w.detach().float().clone()
    H = h.detach().double().clone()
    dead = H.diagonal() <= 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(damp * H.diagonal().mean())
    u = inverse_cholesky(H)
    eye = torch.eye(DIM, dtype=torch.float64)
    Q = torch.zeros_like(W)
    codes = torch.zeros(out, cols // DIM, dtype=torch.int64)
    lazy = max(DIM, lazy - lazy % DIM)
    for i1 in range(0, cols, lazy):
        i2 = min(i1 + lazy, cols)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros(out, i2 - i1, dtype=torch.float64)
        for b0 in range(0, i2 - i1, DIM):
            c = slice(b0, b0 + DIM)
            g = slice(i1 + b0, i1 + b0 + DIM)
            k, q = quant(W1[:, c], (i1 + b0) // DIM)
            codes[:, (i1 + b0) // DIM] = k
            Q[:, g] = q
            # E_b U_bb^-1, then fold into the rest of the batch
            e = (W1[:, c] - q).double() @ torch.linalg.solve_triangular(u[g, g], eye, upper=True)
            E1[:, c] = e
            W1[:, b0 + DIM:] -= (e @ u[g, i1 + b0 + DIM:i2]).float()
        W[:, i2:] -= (E1 @ u[i1:i2, i2:]).float()
    return codes, Q


def e8p_storage_bits(out: int, cols: int, row_scale: bool) -> int:
    """Bits of one layer: 16 per 8 weights, a float16 layer scale, float16 row scales."""
    return out * cols // DIM * CODE_BITS + SIDE_BITS + (out * SIDE_BITS if row_scale else 0)


def _errors(w: Tensor, q: Tensor, h: Tensor) -> float:
    d = (w - q).double()
    return float(((d @ h.double()) * d).sum())


@torch.no_grad()
def e8p_quantize(w: Tensor, h: Tensor, row_scale: bool = True, scales=SCALE_GRID,
                 damp: float = 0.01, name: str = "layer") -> tuple[Tensor, Tensor, Tensor,
                                                                   Tensor | None]:
    """E8P + BlockLDLQ of ``w`` (already rotated, if incoherence is wanted) for ``H`` = ``h``.

    The weight is divided by its float16 row RMS (``row_scale``) and by a float16 layer
    scale; each multiple in ``scales`` of ``RMS / 1.03`` (the Gaussian fit QuIP# uses) is
    tried with the full BlockLDLQ pass and the one with the least output error kept.

    Returns:
        ``(dequantized weight, codes (out, in/8), layer scale, row scales or None)``.
    """
    wf = w.float()
    rs = None
    if row_scale:
        rs = wf.pow(2).mean(1).sqrt().clamp_min(1e-8).to(SIDE_DTYPE).float()
        rs = rs.clamp_min(float(torch.finfo(SIDE_DTYPE).tiny))
    wn = wf / rs[:, None] if rs is not None else wf
    base = float(wn.pow(2).mean().sqrt().clamp_min(1e-12)) / 1.03
    best = None
    for c in scales:
        s = torch.tensor(base * c).to(SIDE_DTYPE).float()

        def quant(x: Tensor, _b: int, s: Tensor = s) -> tuple[Tensor, Tensor]:
            r = rs[:, None] * s if rs is not None else s
            k, p = nearest(x / r)
            return k, p * r

        k, q = block_ldlq(wf, h, quant, damp=damp, name=name)
        err = _errors(wf, q, h)
        if best is None or err < best[0]:
            best = (err, q, k, s)
    _, q, k, s = best
    return q, k, s, rs


@dataclass
class E8PLayer:
    """What an :class:`E8PBaseline` made of one layer, kept (``keep=True``) for scale tuning
    (:func:`llvq.llm.tune.scale_tuning`).

    Attributes:
        weight: the dequantized weight in the rotated coordinates, ``diag(row_scale) *
            layer_scale * P`` (float32; the layer's own weight is ``U^T weight V``).
        row_scale: the float16 row scales (``None`` without ``row_scale``).
        layer_scale: the float16 layer scale (a 0-d tensor).
        seed: the seed of the layer's rotations (``None`` without incoherence).
    """

    weight: Tensor
    row_scale: Tensor | None
    layer_scale: Tensor
    seed: int | None


@LLM_BASELINES.register("e8p")
class E8PBaseline:
    """QuIP#'s quantizer without fine-tuning: incoherence, the E8P codebook, BlockLDLQ.

    ``calibrated = True`` and ``inputs = ("name",)`` (the layer's name seeds its transforms,
    which are rebuilt from the seed at load time and cost no bits). 2 bits per weight plus a
    float16 scale per layer and (``row_scale``) per row.

    Args:
        bits: must be 2 (the codebook's rate).
        group_size: unused (E8P has no groups); accepted so the bench's ``e8p-2`` builds it
            like every baseline.
        row_scale: divide each row by its float16 RMS first (QuIP# has one scale per layer;
            the row scales cost ``16 / in`` bits per weight).
        incoherence: randomized Hadamard transforms on both sides (QuIP#'s default).
        damp: BlockLDLQ's dampening.
        seed: offset of the per-layer transform seeds.
        keep: keep each layer's :class:`E8PLayer` in :attr:`layers` by name (for tuning the
            stored row scales afterwards; a float32 copy of every weight).
    """

    calibrated = True
    inputs = ("name",)

    def __init__(self, bits: int = 2, group_size: int | None = None, row_scale: bool = True,
                 incoherence: bool = True, damp: float = 0.01, seed: int = 0,
                 keep: bool = False) -> None:
        self.bits = check_bits("e8p", bits, (2,))
        if not 0 <= damp < 1:
            raise ValueError(f"LLM baseline 'e8p': damp must be in [0, 1), got {damp}")
        self.row_scale = bool(row_scale)
        self.incoherence = bool(incoherence)
        self.damp = damp
        self.seed = int(seed)
        self.keep = bool(keep)
        self.layers: dict[str, E8PLayer] = {}

    def __call__(self, w: Tensor, h: Tensor, name: str = "layer") -> BaselineOutput:
        seed = layer_seed(name, self.seed)
        wr, hr = rotate(w.float(), h.float(), seed) if self.incoherence else (w.float(), h.float())
        q, _, layer_scale, rs = e8p_quantize(wr, hr, self.row_scale, damp=self.damp, name=name)
        w_hat = unrotate(q, seed) if self.incoherence else q
        if self.keep:
            self.layers[name] = E8PLayer(q, None if rs is None else rs.to(SIDE_DTYPE),
                                         layer_scale.to(SIDE_DTYPE),
                                         seed if self.incoherence else None)
        out, cols = w.shape
        return BaselineOutput(weight=w_hat, bits=float(e8p_storage_bits(out, cols, self.row_scale)))

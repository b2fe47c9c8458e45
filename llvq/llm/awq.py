"""AWQ (Lin et al., 2024) for one weight matrix, as a calibrated LLM baseline.

Activation-aware weight quantization keeps the weight format of round to nearest (asymmetric
min-max per row and group, a float16 scale and a ``bits``-wide zero) and changes *what* is
rounded: input channel ``j`` of the weight is multiplied by ``s_j`` before rounding and the
input divided by it (folded into the preceding norm or linear layer, so it costs no bits), and
each group's range is clipped. As AutoAWQ (``awq/quantize/quantizer.py``) does it:

- **scale search**: ``s = x_mean^a / w_mean^(1-a)`` (``duo_scaling``; ``x_mean^a`` without),
  normalised by ``sqrt(max s * min s)``, for ``a`` in ``0, 1/20, ..., 19/20``; ``x_mean`` is the
  mean ``|x_j|`` over the calibration tokens, ``w_mean`` the mean over rows of ``|w|`` divided
  by its group's maximum. The ``a`` with the least output error is kept (``a = 0`` with
  ``duo_scaling`` off is plain RTN, so the search never does worse than RTN on its loss);
- **clip search** on the scaled weight and scaled inputs: per row and group, the range
  ``±max|w| (1 - i/20)`` for ``i < 10`` with the least error of that group's output
  contribution; skipped for query and key projections, as in AutoAWQ;
- the weight is rounded (:func:`llvq.llm.baselines.rtn_quantize`) and divided by ``s`` again.

One deliberate difference, generous to AWQ: AutoAWQ searches one ``s`` for the layers that share
an input (q/k/v, gate/up) on their parent module's output, and skips a scale that cannot be
folded (``o_proj`` under grouped-query attention). Here every layer gets its own ``s``, chosen on
its own output error ``tr(E H E^T)`` over *all* calibration tokens (AutoAWQ subsamples 512 for
the clip), and every ``s`` is counted as free. Bits per weight are RTN's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llvq.llm.baselines import LLM_BASELINES, BaselineOutput, check_bits, rtn_quantize

__all__ = ["AWQBaseline", "awq_quantize"]

#: layer-name fragments whose range AutoAWQ never clips (attention scores are sensitive to them)
NO_CLIP = ("q_", "k_", "query", "key", "qkv")


def _output_error(e: Tensor, h: Tensor) -> Tensor:
    """``tr(E H E^T)``: the squared output error of weight error ``e`` summed over the tokens."""
    return ((e @ h) * e).sum()


def _group_errors(e: Tensor, hb: Tensor, group_size: int) -> Tensor:
    """``(out, groups)``: each group's own output error, ``e_g^T H_gg e_g`` per row."""
    out, cols = e.shape
    eg = e.reshape(out, cols // group_size, group_size)
    return torch.einsum("ogi,gij,ogj->og", eg, hb, eg)


@torch.no_grad()
def awq_quantize(w: Tensor, h: Tensor, abs_mean: Tensor, bits: int, group_size: int = 128,
                 grid: int = 20, duo_scaling: bool = True, clip: bool = True,
                 max_shrink: float = 0.5, name: str = "layer") -> tuple[Tensor, float, float]:
    """AWQ of one ``(out, in)`` weight.

    Args:
        w: the weight.
        h: ``(in, in)`` input second moment ``sum x x^T`` over the calibration tokens.
        abs_mean: ``(in,)`` mean ``|x_j|`` over the same tokens.
        bits: code bits.
        group_size: input columns per scale and zero.
        grid: points of the scale-exponent and clip searches.
        duo_scaling: divide by the weight's normalised magnitude too (AutoAWQ's default).
        clip: search each group's clipping range.
        max_shrink: the clip search goes down to ``(1 - max_shrink)`` of the group's range.
        name: the layer's name, for errors.

    Returns:
        The dequantized weight (float32), bits per weight as stored, and the chosen exponent.
    """
    out, cols = w.shape
    if h.shape != (cols, cols) or abs_mean.shape != (cols,):
        raise ValueError(f"AWQ '{name}': H is {tuple(h.shape)} and abs_mean "
                         f"{tuple(abs_mean.shape)}; the weight has {cols} input columns")
    if cols % group_size:
        raise ValueError(f"AWQ '{name}': group_size={group_size} does not divide the input "
                         f"width {cols}")
    if grid < 1 or not 0 <= max_shrink < 1:
        raise ValueError(f"AWQ: need grid >= 1 and 0 <= max_shrink < 1, got {grid}, {max_shrink}")
    W = w.detach().float()
    H = h.detach().double()
    H = (H / H.diagonal().sum().clamp_min(1e-300)).float()  # the loss's scale does not matter
    x_mean = abs_mean.detach().float()
    g = W.abs().reshape(out, cols // group_size, group_size)
    w_mean = (g / (g.amax(-1, keepdim=True) + 1e-6)).reshape(out, cols).mean(0)

    best, best_a, best_s = None, 0.0, torch.ones(cols)
    for i in range(grid):
        a = i / grid
        s = x_mean.pow(a) / (w_mean.pow(1 - a) + 1e-4) if duo_scaling else x_mean.pow(a)
        s = s.clamp_min(1e-4)
        s = s / (s.max() * s.min()).sqrt()
        w_hat = rtn_quantize(W * s, bits, group_size)[0] / s
        err = float(_output_error(W - w_hat, H))
        if best is None or err < best:
            best, best_a, best_s = err, a, s

    Ws = W * best_s
    if clip and not any(k in name.rsplit(".", 1)[-1].lower() for k in NO_CLIP):
        Hs = H / best_s[:, None] / best_s[None, :]  # the inputs are divided by s
        m = cols // group_size
        hb = torch.stack([Hs[k * group_size:(k + 1) * group_size,
                             k * group_size:(k + 1) * group_size] for k in range(m)])
        top = Ws.abs().reshape(out, m, group_size).amax(-1, keepdim=True)
        lim, least = top.clone(), None
        for i in range(int(max_shrink * grid)):
            cur = top * (1 - i / grid)
            wc = Ws.reshape(out, m, group_size).clamp(-cur, cur)
            q = rtn_quantize(wc.reshape(out, cols), bits, group_size)[0]
            err = _group_errors(Ws - q, hb, group_size)
            if least is None:
                least = err
                continue
            better = err < least
            least = torch.where(better, err, least)
            lim = torch.where(better[..., None], cur, lim)
        Ws = Ws.reshape(out, m, group_size).clamp(-lim, lim).reshape(out, cols)
    w_hat, bpw = rtn_quantize(Ws, bits, group_size)
    return w_hat / best_s, bpw, best_a


@LLM_BASELINES.register("awq")
class AWQBaseline:
    """AWQ as an LLM baseline (:func:`awq_quantize`): RTN's format, activation-aware.

    ``calibrated = True`` and ``inputs = ("abs_mean", "name")``: it is called as
    ``baseline(w, h, abs_mean=..., name=...)`` by :func:`llvq.llm.ptq.quantize_with_baseline`,
    block by block on the calibration windows (each block sees the outputs of the quantized
    blocks before it).

    Args:
        bits: code bits (1 to 8).
        group_size: input columns per scale and zero.
        grid: points of the scale and clip searches (AutoAWQ: 20).
        duo_scaling: AutoAWQ's default scale form (activation and weight magnitudes).
        clip: search each group's clipping range (AutoAWQ's ``apply_clip``).
    """

    calibrated = True
    inputs = ("abs_mean", "name")

    def __init__(self, bits: int, group_size: int = 128, grid: int = 20,
                 duo_scaling: bool = True, clip: bool = True) -> None:
        if group_size < 1 or grid < 1:
            raise ValueError(f"LLM baseline 'awq': need group_size >= 1 and grid >= 1, got "
                             f"{group_size}, {grid}")
        self.bits = check_bits("awq", bits, tuple(range(1, 9)))
        self.group_size = group_size
        self.grid = grid
        self.duo_scaling = duo_scaling
        self.clip = clip
        self.exponents: list[float] = []  # the exponent chosen for each layer, in call order

    def __call__(self, w: Tensor, h: Tensor, abs_mean: Tensor | None = None,
                 name: str = "layer") -> BaselineOutput:
        if abs_mean is None:
            raise ValueError(f"LLM baseline 'awq' needs the mean |x| of layer '{name}''s inputs: "
                             "run it with llvq.llm.ptq.quantize_with_baseline")
        w_hat, bpw, a = awq_quantize(w, h, abs_mean, self.bits, self.group_size, self.grid,
                                     self.duo_scaling, self.clip, name=name)
        self.exponents.append(a)
        return BaselineOutput(weight=w_hat, bits=bpw * w.numel())

"""Baseline weight quantizers for LLMs, by name: the ``LLM_BASELINES`` registry.

A baseline is registered as a class (or factory) taking ``bits`` and ``group_size`` (and any
options of its own); the built object maps one weight matrix to a :class:`BaselineOutput`::

    from llvq.llm.baselines import LLM_BASELINES, BaselineOutput

    @LLM_BASELINES.register("my_rtn")
    class MyRTN:
        def __init__(self, bits: int, group_size: int = 128) -> None: ...
        def __call__(self, w: Tensor) -> BaselineOutput: ...

The LLM PTQ module evaluates the names in ``model.eval.baselines`` on the full-precision
weights (``final/ppl_<name>``), and ``bench/llm_ptq.py`` / ``bench/llm_peers.py`` build theirs
from here, so a package that registers a baseline (through an ``llvq.plugins`` entry point)
is measured the same way. Built in: ``rtn`` (group-wise round to nearest), ``hqq``
(half-quadratic quantization; needs the ``hqq`` package, imported only when it is built),
``gptq`` (:mod:`llvq.llm.gptq`) and ``awq`` (:mod:`llvq.llm.awq`). A baseline with
``calibrated = True`` is called as ``baseline(w, h)`` with the layer's input second moment
``h`` (plus the keyword arguments its ``inputs`` tuple names: ``abs_mean``, the mean ``|x_j|``
per input column, and ``name``, the layer's name), and is run block by block on the
calibration windows by :func:`llvq.llm.ptq.quantize_with_baseline`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from llvq.llm.groups import SIDE_BITS, SIDE_DTYPE
from llvq.registry import Registry

__all__ = [
    "LLM_BASELINES",
    "BaselineOutput",
    "BitTally",
    "HQQBaseline",
    "RTNBaseline",
    "apply_baseline",
    "check_bits",
    "rtn_quantize",
]

LLM_BASELINES: Registry[Any] = Registry("LLM baseline", setting="model.eval.baselines")


@dataclass
class BaselineOutput:
    """One quantized weight matrix.

    Attributes:
        weight: the dequantized weight, same shape as the input (float32).
        bits: bits the layer takes as the baseline stores it (codes and side information).
        extra: more bit counts of the layer (e.g. HQQ with float16 metadata), summed and
            divided by the weight count like ``bits`` in :func:`apply_baseline`.
    """

    weight: Tensor
    bits: float
    extra: dict[str, float] = field(default_factory=dict)


class BitTally:
    """Sums the bits of quantized layers; :meth:`report` gives them per weight."""

    def __init__(self) -> None:
        self.total, self.numel = 0.0, 0
        self.extra: dict[str, float] = {}

    def add(self, res: BaselineOutput, numel: int) -> None:
        self.total += res.bits
        self.numel += numel
        for k, v in res.extra.items():
            self.extra[k] = self.extra.get(k, 0.0) + v

    def report(self) -> dict[str, float]:
        """``{"bits_per_weight", "bits_per_weight_<extra>"..., "weights"}``."""
        n = max(self.numel, 1)
        return {"bits_per_weight": self.total / n,
                **{k.replace("bits_", "bits_per_weight_", 1): v / n for k, v in self.extra.items()},
                "weights": float(self.numel)}


def rtn_quantize(w: Tensor, bits: int, group_size: int) -> tuple[Tensor, float]:
    """Round-to-nearest asymmetric scalar quantization per (row, group of columns).

    The scale is float16 and the zero point an integer in ``[0, 2^bits - 1]`` per row and group,
    stored as GPTQ stores its zeros (``bits`` wide), so the layer costs
    ``bits + (16 + bits) / group_size`` bits per weight. Returns the dequantized weight and
    that figure.
    """
    out, inp = w.shape
    if inp % group_size:
        raise ValueError(f"model.glvq.group_size={group_size} does not divide the input width {inp}")
    v = w.float().reshape(out, inp // group_size, group_size)
    lo, hi = v.amin(-1, keepdim=True), v.amax(-1, keepdim=True)
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax).clamp_min(1e-8).to(SIDE_DTYPE).float()
    zero = torch.round(-lo / scale).clamp(0, qmax).to(SIDE_DTYPE).float()
    codes = torch.clamp(torch.round(v / scale) + zero, 0, qmax)
    w_hat = ((codes - zero) * scale).reshape(out, inp)
    return w_hat, bits + (SIDE_BITS + bits) / group_size


def check_bits(name: str, bits: Any, allowed: tuple[int, ...] | None = None) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or bits < 1 \
            or (allowed is not None and bits not in allowed):
        want = f"one of {allowed}" if allowed else "an integer >= 1"
        raise ValueError(f"LLM baseline '{name}': bits must be {want}, got {bits!r}")
    return bits


@LLM_BASELINES.register("rtn")
class RTNBaseline:
    """Asymmetric round to nearest per row and group (:func:`rtn_quantize`).

    Args:
        bits: code bits per weight.
        group_size: input columns per float16 scale and zero.
    """

    def __init__(self, bits: int, group_size: int = 128) -> None:
        self.bits = check_bits("rtn", bits)
        self.group_size = group_size

    def __call__(self, w: Tensor) -> BaselineOutput:
        w_hat, bpw = rtn_quantize(w, self.bits, self.group_size)
        return BaselineOutput(weight=w_hat, bits=bpw * w.numel())


def _tensor_bits(t: object) -> int:
    return t.numel() * t.element_size() * 8 if isinstance(t, torch.Tensor) else 0


@LLM_BASELINES.register("hqq")
class HQQBaseline:
    """HQQ (half-quadratic quantization, calibration-free), through the ``hqq`` package on CPU.

    Each weight goes through ``HQQLinear`` with compute dtype float32 and comes back as HQQ's
    dequantized weight. ``bits`` counts what HQQ stores: the packed codes (3-bit packs ten codes
    into each int32) and one scale and one zero per group in their stored dtype (float32 here,
    i.e. ``64 / group_size`` extra bits per weight); ``extra["bits_fp16_meta"]`` counts the
    metadata as float16, HQQ's default and the figure usually quoted.

    Args:
        bits: HQQ code bits (1, 2, 3, 4 or 8).
        group_size: weights per scale/zero group.
    """

    def __init__(self, bits: int, group_size: int = 64) -> None:
        self.bits = check_bits("hqq", bits, (1, 2, 3, 4, 8))
        try:
            from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
        except ImportError as err:
            raise ImportError("LLM baseline 'hqq' needs the `hqq` package (pip install hqq); "
                              "drop it from model.eval.baselines / the bench otherwise") from err
        self._linear = HQQLinear
        self._config = BaseQuantizeConfig(nbits=self.bits, group_size=group_size)
        self.group_size = group_size

    def __call__(self, w: Tensor) -> BaselineOutput:
        out, inp = w.shape
        linear = nn.Linear(inp, out, bias=False)
        with torch.no_grad():
            linear.weight.copy_(w.float())
        layer = self._linear(linear, self._config, del_orig=False, compute_dtype=torch.float32,
                             device="cpu")
        code_bits = _tensor_bits(layer.W_q)
        meta = [layer.meta.get(k) for k in ("scale", "zero")]
        meta_bits = sum(_tensor_bits(t) for t in meta)
        meta_count = sum(t.numel() for t in meta if torch.is_tensor(t))
        w_hat = layer.dequantize().reshape(out, inp).to(torch.float32)
        return BaselineOutput(weight=w_hat, bits=float(code_bits + meta_bits),
                              extra={"bits_fp16_meta": float(code_bits + 16 * meta_count)})


@torch.no_grad()
def apply_baseline(linears: dict[str, nn.Module], baseline: Any,
                   weights: dict[str, Tensor] | None = None) -> dict[str, float]:
    """Quantize every layer of ``linears`` with ``baseline``, writing the weights in place.

    Args:
        linears: ``{name: nn.Linear}`` (e.g. :func:`llvq.llm.models.quantizable_linears`).
        baseline: a built baseline (``LLM_BASELINES.build(name, bits=..., group_size=...)``).
        weights: the weights to quantize per layer (default: the layers' current weights).

    Returns:
        ``{"bits_per_weight": ..., **{key: per-weight figure of each extra count}, "weights": n}``.
    """
    if getattr(baseline, "calibrated", False):
        raise ValueError(f"{type(baseline).__name__} needs calibration data (each layer's H): "
                         "run it with llvq.llm.ptq.quantize_with_baseline")
    tally = BitTally()
    for name, lin in linears.items():
        w = (weights[name] if weights is not None else lin.weight).detach()
        res = baseline(w)
        lin.weight.copy_(res.weight.to(lin.weight))
        tally.add(res, w.numel())
    return tally.report()

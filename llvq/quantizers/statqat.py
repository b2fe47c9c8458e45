"""StatQAT: uniform (INT-b) and floating-point (FP4/FP6/FP8) quantizers whose parameter is chosen
by a statistical rule.

StatQAT ("Statistical Quantizer Optimization for Deep Networks", see ``shared/papers/002``)
analyses the error of uniform and floating-point quantization and picks the quantizer's
parameters (step, clipping, exponent bias) for low error: analytic rules for Gaussian-like
weights, iterative ones for arbitrary data. Here a format is a fixed sorted grid of levels
``g`` (the integers ``-(2^(b-1)-1) .. 2^(b-1)-1`` for INT-b; every finite value of the
minifloat for FP) times ONE scale ``s`` per tensor; ``x`` is sent as the index of the level
nearest to ``x / s``. For a minifloat ``s`` subsumes the exponent bias (a power of two) and a
finer scale. The ``fit`` setting chooses ``s``:

- ``minmax``: ``s = max|x| / max|g|`` (no clipping);
- ``mse``: grid search of the clipping ratio ``α`` in ``s = α max|x| / max|g|``
  (``grid_points`` values in ``[0.02, 1]``), least squared error on the data (a strided
  sample of at most 16,384 elements);
- ``analytic``: ``s = c* σ`` with ``σ² = mean(x²)`` and ``c*`` the scale minimizing the
  expected error for a standard Gaussian — the closed form below, minimized once per grid;
- ``iterative``: Lloyd-style alternation on the data from the analytic start: assign each
  ``x`` to its nearest level, then ``s = Σ x g_i / Σ g_i²`` (the least-squares scale for that
  assignment); the error never increases (on the same strided sample; stops when ``s``
  moves by less than 1e-4, relative).

The expected error of a grid at scale ``s`` for ``x ~ N(0, σ²)`` (the statistical analysis)
sums over the cells ``[a_i, b_i]`` (between midpoints) of the levels ``q_i = s g_i``, with
``φ``, ``Φ`` the standard normal density and distribution, in units of ``σ``:
``E = σ² Σ_i [(Φ(b_i) - Φ(a_i))(1 + q_i²) - (b_i φ(b_i) - a_i φ(a_i)) + 2 q_i (φ(b_i) - φ(a_i))]``.
Every call logs it (``mse_expected``, with ``σ`` of the data) next to the measured ``mse``.

The scale lives in a buffer: in training mode it is fitted on each input (and, with
``momentum``, averaged into the buffer); in eval mode the buffer is used (fitted on the first
input if never set), so ``decode(encode(z)) == forward(z).z_q``. ``dynamic=True`` fits and
stores the scale on every call, in both modes (weights in quantization-aware training).
Codes are level indices ``(..., d)`` in ``[0, L)``; ``bits_per_vector = d × format bits``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from llvq.quantizers.base import Quantizer, QuantizerOutput
from llvq.quantizers.registry import register

__all__ = ["FITS", "FP_FORMATS", "FPQuantizer", "GridQuantizer", "IntQuantizer", "fit_scale",
           "fp_levels", "gaussian_mse", "gaussian_scale", "int_levels"]

FITS = ("minmax", "mse", "analytic", "iterative")
#: name -> (exponent bits, mantissa bits, special values): "none" = every code finite (OCP
#: FP4/FP6), "fn" = only S.1..1.1..1 is NaN (OCP E4M3), "ieee" = top exponent for inf/NaN
FP_FORMATS: dict[str, tuple[int, int, str]] = {
    "e2m1": (2, 1, "none"), "e3m2": (3, 2, "none"), "e2m3": (2, 3, "none"),
    "e4m3": (4, 3, "fn"), "e5m2": (5, 2, "ieee"),
}
_SAMPLE = 1 << 14  # the mse and iterative fits look at most at this many (strided) elements


def int_levels(bits: int) -> Tensor:
    """The symmetric INT-b grid ``-(2^(b-1)-1) .. 2^(b-1)-1`` (float64; ``2^b - 1`` levels)."""
    top = 2 ** (bits - 1) - 1
    return torch.arange(-top, top + 1, dtype=torch.float64)


def fp_levels(fmt: str) -> Tensor:
    """Every finite value of the minifloat ``fmt`` (``"e2m1"``, ...), sorted, ±0 merged (float64).

    Exponent bias ``2^(E-1) - 1``; subnormals included (e.g. E2M1: 0, ±0.5, ±1, ..., ±6).
    """
    e_bits, m_bits, special = FP_FORMATS[fmt]
    bias = 2 ** (e_bits - 1) - 1
    top_e = 2 ** e_bits - 1
    values = []
    for e in range(top_e + 1):
        if special == "ieee" and e == top_e:
            continue
        for m in range(2 ** m_bits):
            if special == "fn" and e == top_e and m == 2 ** m_bits - 1:
                continue
            frac = m / 2 ** m_bits
            values.append(frac * 2.0 ** (1 - bias) if e == 0 else (1 + frac) * 2.0 ** (e - bias))
    pos = torch.tensor(sorted(set(values)), dtype=torch.float64)
    return torch.cat([-pos.flip(0)[:-1], pos])  # pos[0] == 0


def gaussian_mse(levels: Tensor, scale: float, sigma: float = 1.0) -> float:
    """Expected squared error of nearest-level quantization on ``scale * levels`` for
    ``x ~ N(0, sigma²)`` (the closed form in the module docstring)."""
    if sigma <= 0:
        return 0.0
    q = levels.double() * scale / sigma  # (L,) in units of sigma
    mid = (q[1:] + q[:-1]) / 2
    inf = torch.tensor([math.inf], dtype=torch.float64)
    a, b = torch.cat([-inf, mid]), torch.cat([mid, inf])
    cdf = torch.special.ndtr
    pdf = lambda t: torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
    tpdf = lambda t: torch.where(torch.isinf(t), 0.0, t * pdf(t))
    e = (cdf(b) - cdf(a)) * (1 + q * q) - (tpdf(b) - tpdf(a)) + 2 * q * (pdf(b) - pdf(a))
    return float(e.sum().clamp_min(0)) * sigma * sigma


@lru_cache(maxsize=64)
def _gaussian_scale(key: tuple[float, ...]) -> float:
    levels = torch.tensor(key, dtype=torch.float64)
    top = float(levels.abs().max())
    a, b = math.log(0.05 / top), math.log(8.0 / top)
    phi = (math.sqrt(5) - 1) / 2
    c1, c2 = b - phi * (b - a), a + phi * (b - a)
    f1, f2 = gaussian_mse(levels, math.exp(c1)), gaussian_mse(levels, math.exp(c2))
    for _ in range(80):  # golden section on log s
        if f1 <= f2:
            b, c2, f2 = c2, c1, f1
            c1 = b - phi * (b - a)
            f1 = gaussian_mse(levels, math.exp(c1))
        else:
            a, c1, f1 = c1, c2, f2
            c2 = a + phi * (b - a)
            f2 = gaussian_mse(levels, math.exp(c2))
    return math.exp(c1 if f1 <= f2 else c2)


def gaussian_scale(levels: Tensor) -> float:
    """``c*``: the scale of ``levels`` with the least expected error for ``N(0, 1)``."""
    return _gaussian_scale(tuple(levels.double().tolist()))


def _nearest(x: Tensor, levels: Tensor) -> Tensor:
    """Index of the nearest level."""
    top = (levels.numel() - 1) // 2
    if levels.numel() % 2 and float(levels[-1]) == top and float(levels[0]) == -top \
            and levels.numel() == 2 * top + 1:  # the integer grid: rounding is the search
        return (torch.floor(x + 0.5).clamp(-top, top) + top).long()
    return torch.bucketize(x.contiguous(), (levels[1:] + levels[:-1]) / 2)


def fit_scale(x: Tensor, levels: Tensor, fit: str, grid_points: int = 100,
              iterations: int = 20) -> float:
    """The scale ``s`` of ``levels`` for data ``x`` by rule ``fit`` (see the module docstring).

    Args:
        x: the data (any shape; flattened).
        levels: the format's sorted grid (float).
        fit: ``"minmax"``, ``"mse"``, ``"analytic"`` or ``"iterative"``.
        grid_points: candidates of the ``mse`` search.
        iterations: at most this many ``iterative`` steps.
    """
    x = x.detach().flatten().float()
    lv = levels.float().to(x.device)
    top = float(lv.abs().max())
    amax = float(x.abs().max()) if x.numel() else 0.0
    if amax == 0.0:
        return 1.0
    if fit == "minmax":
        return amax / top
    xs = x[:: max(1, x.numel() // _SAMPLE)]  # the searches look at a strided sample
    if fit == "mse":
        ratios = torch.linspace(0.02, 1.0, grid_points, device=x.device)
        errs = torch.stack([(xs - lv[_nearest(xs / s, lv)] * s).pow(2).mean()
                            for s in (ratios * amax / top).tolist()])
        return float(ratios[int(errs.argmin())]) * amax / top
    sigma = float(x.pow(2).mean().sqrt())
    s = gaussian_scale(levels) * sigma
    if fit == "analytic":
        return s
    for _ in range(iterations):  # iterative: Lloyd-style on the scale
        g = lv[_nearest(xs / s, lv)]
        den = float(g.pow(2).sum())
        if den == 0.0:
            break
        new = float((xs * g).sum()) / den
        if abs(new - s) <= 1e-4 * s:
            s = new
            break
        s = new
    return s


class GridQuantizer(Quantizer):
    """A fixed grid of levels times one fitted scale per tensor (INT-b and FP share this).

    Args:
        dim: vector width (only the last axis is checked; the scale is per tensor).
        levels: the sorted grid (float64).
        format_bits: the nominal bits per element (``bits_per_vector = dim × format_bits``).
        fit: ``minmax``, ``mse``, ``analytic`` or ``iterative``.
        momentum: in training mode the buffer becomes ``(1 - momentum) old + momentum new``
            (the first fit is taken as is); 1 keeps the latest fit.
        dynamic: fit and store the scale on every call, in eval mode too.
        grid_points, iterations: of the ``mse`` and ``iterative`` fits.
    """

    vector_codes = True

    def __init__(self, dim: int, levels: Tensor, format_bits: int, fit: str = "mse",
                 momentum: float = 0.1, dynamic: bool = False, grid_points: int = 100,
                 iterations: int = 20) -> None:
        super().__init__(dim)
        if fit not in FITS:
            raise ValueError(f"quantizer '{self.name}': unknown fit={fit!r}; choose one of {FITS}")
        if not 0 < momentum <= 1:
            raise ValueError(f"quantizer '{self.name}': momentum={momentum} must be in (0, 1]")
        self.fit, self.momentum, self.dynamic = fit, float(momentum), bool(dynamic)
        self.grid_points, self.iterations = int(grid_points), int(iterations)
        self.format_bits = int(format_bits)
        self.codebook_size = int(levels.numel())
        self.register_buffer("levels", levels.float())
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def bits_per_vector(self) -> float:
        return float(self.dim * self.format_bits)

    def _scale_for(self, z: Tensor) -> Tensor:
        """The scale of this call (fits and updates the buffer as the mode says)."""
        fresh = self.training or self.dynamic or not bool(self.fitted)
        if fresh:
            s = fit_scale(z, self.levels, self.fit, self.grid_points, self.iterations)
            m = 1.0 if (self.dynamic or not bool(self.fitted)) else self.momentum
            self.scale.mul_(1 - m).add_(m * s)
            self.fitted.fill_(True)
            if self.training and not self.dynamic:
                return torch.tensor(s, dtype=self.scale.dtype, device=self.scale.device)
        return self.scale.clone()

    def encode_impl(self, z: Tensor) -> Tensor:
        s = self._scale_for(z)
        return _nearest(z.detach().float() / s, self.levels)

    def decode(self, codes: Tensor, scale: Tensor | None = None) -> Tensor:
        if codes.is_floating_point():
            raise ValueError(f"quantizer '{self.name}': codes must be integers, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"quantizer '{self.name}': codes outside [0, {self.codebook_size})")
        return self.levels[codes] * (self.scale if scale is None else scale)

    def quantize(self, z: Tensor) -> QuantizerOutput:
        s = self._scale_for(z)
        x = z.detach().float()
        codes = _nearest(x / s, self.levels)
        q = self.decode(codes, s).to(z.dtype)
        if x.numel():
            sigma = float(x.pow(2).mean().sqrt())
            metrics = {
                "mse": (q.float() - x).pow(2).mean(),
                "mse_expected": z.new_tensor(gaussian_mse(self.levels, float(s), sigma)),
                "scale": s.detach().float().clone(),
                "clip_rate": (x.abs() > self.levels.max() * s).float().mean(),
            }
        else:
            metrics = {}
        return QuantizerOutput(z + (q - z).detach(), codes, z.new_zeros(()), metrics)


@register("statqat_int")
class IntQuantizer(GridQuantizer):
    """INT-b: the symmetric integer grid ``±(2^(b-1)-1)`` times a fitted scale (StatQAT).

    Args:
        dim: vector width.
        bits: ``b``, 2 to 16.
        fit, momentum, dynamic, grid_points, iterations: see :class:`GridQuantizer`.
    """

    def __init__(self, dim: int, bits: int = 4, fit: str = "mse", momentum: float = 0.1,
                 dynamic: bool = False, grid_points: int = 100, iterations: int = 20) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
            raise ValueError(f"quantizer 'statqat_int': bits={bits!r} must be a whole number "
                             f"from 2 to 16")
        self.bits = bits
        super().__init__(dim, int_levels(bits), bits, fit, momentum, dynamic, grid_points,
                         iterations)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, bits={self.bits}, fit={self.fit}, dynamic={self.dynamic}"


@register("statqat_fp")
class FPQuantizer(GridQuantizer):
    """A minifloat (FP4 E2M1, FP6 E3M2 / E2M3, FP8 E4M3 / E5M2) times a fitted scale (StatQAT).

    Args:
        dim: vector width.
        format: ``e2m1``, ``e3m2``, ``e2m3``, ``e4m3`` or ``e5m2``.
        fit, momentum, dynamic, grid_points, iterations: see :class:`GridQuantizer`.
    """

    def __init__(self, dim: int, format: str = "e2m1", fit: str = "mse",
                 momentum: float = 0.1, dynamic: bool = False, grid_points: int = 100,
                 iterations: int = 20) -> None:
        if format not in FP_FORMATS:
            raise ValueError(f"quantizer 'statqat_fp': unknown format={format!r}; choose one of "
                             f"{sorted(FP_FORMATS)}")
        e_bits, m_bits, _ = FP_FORMATS[format]
        self.format = format
        super().__init__(dim, fp_levels(format), 1 + e_bits + m_bits, fit, momentum, dynamic,
                         grid_points, iterations)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, format={self.format}, fit={self.fit}, dynamic={self.dynamic}"

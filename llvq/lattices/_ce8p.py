"""A compiled nearest-point search for the E8P codebook (:func:`llvq.lattices.e8p.nearest`).

The same exact search as the torch path, one vector at a time: for each shift ``±1/4`` and
each of the 256 absolute patterns ``a``, the distance from ``z = x - shift`` to the best signed
pattern is ``||z|^2 - 2 |z|·a + |a|^2``, plus ``4 min_i |z_i| a_i`` when the signs of ``z``
have the wrong parity (the cheapest coordinate is flipped); the least of the 512 wins, ties to
the first (shift ``+1/4`` first, then the pattern order), as in the torch path. The pattern
loop runs over the 256 patterns for each coordinate, so the compiler vectorizes it.

Built and cached like :mod:`llvq.lattices._cfast` (``cc -O3 -march=native``, then plain
``-O3``; ``$LLVQ_CACHE``; ``LLVQ_NO_CKERNEL=1`` disables it); :func:`kernels` returns ``None``
when no kernel can be built and the torch search is used.
"""

from __future__ import annotations

import ctypes
import threading

import torch
from torch import Tensor

from llvq.lattices._ckernel import _pool, load_library, load_once

__all__ = ["kernels", "nearest_codes", "usable"]

_SOURCE = r"""
#include <math.h>
#include <stdint.h>

/* codes[r] for rows r0 <= r < r1 of x (N, 8): the nearest E8P code (layout: pattern * 256 +
   sign bits of coordinates 0-6 * 2 + shift bit). aT: (8, 256) the absolute patterns by
   coordinate; oT: (8, 256) their doubles (odd integers); asq: (256) their squared norms. */
void e8p_nearest(long r0, long r1, const float *x, const float *aT, const int32_t *oT,
                 const float *asq, int64_t *codes) {
    float dot[256], pen[256];
    int32_t par[256], at[256];
    for (long r = r0; r < r1; ++r) {
        const float *xr = x + r * 8;
        float best = INFINITY;
        int64_t best_code = 0;
        for (int sb = 0; sb < 2; ++sb) {
            const float t = sb ? -0.25f : 0.25f;
            float az[8], zz = 0.0f;
            int32_t sgn[8], mask = 0;
            for (int i = 0; i < 8; ++i) {
                const float z = xr[i] - t;
                const int neg = z < 0.0f;
                az[i] = fabsf(z);
                zz += az[i] * az[i];
                sgn[i] = neg ? -1 : 1;
                if (neg && i < 7) mask |= 1 << i;
            }
            for (int p = 0; p < 256; ++p) {
                const float v = az[0] * aT[p];
                dot[p] = v; pen[p] = v; at[p] = 0; par[p] = sgn[0] * oT[p];
            }
            for (int i = 1; i < 8; ++i) {
                const float *ai = aT + i * 256;
                const int32_t *oi = oT + i * 256;
                const float zi = az[i];
                const int32_t si = sgn[i];
                for (int p = 0; p < 256; ++p) {
                    const float v = zi * ai[p];
                    dot[p] += v;
                    const int less = v < pen[p];
                    pen[p] = less ? v : pen[p];
                    at[p] = less ? i : at[p];
                    par[p] += si * oi[p];
                }
            }
            for (int p = 0; p < 256; ++p) {
                const int wrong = (par[p] & 3) != 0;
                const float cost = zz - 2.0f * dot[p] + asq[p] + (wrong ? 4.0f * pen[p] : 0.0f);
                if (cost < best) {
                    best = cost;
                    int32_t m = mask;
                    if (wrong && at[p] < 7) m ^= 1 << at[p];
                    best_code = (int64_t)p * 256 + (int64_t)m * 2 + sb;
                }
            }
        }
        codes[r] = best_code;
    }
}
"""
_FLAGS = (["-O3", "-march=native"], ["-O3"])
_KERNELS: list = []
_LOCK = threading.Lock()
_TABLES: list = []
_ROWS_PER_THREAD = 4096


def _load() -> dict | None:
    vp, lg = ctypes.c_void_p, ctypes.c_long
    return load_library(_SOURCE, "ce8p", _FLAGS, {"e8p_nearest": [lg, lg, vp, vp, vp, vp, vp]},
                        "the C E8P nearest-point kernel; using the slower torch search")


def kernels() -> dict | None:
    """The loaded C function (compiled on first use), or ``None`` if unavailable or disabled."""
    return load_once(_KERNELS, _LOCK, _load)


def usable(x: Tensor) -> bool:
    """Whether ``x`` ``(N, 8)`` can go through the kernel (CPU, no autograd, C built)."""
    return (x.device.type == "cpu" and x.ndim == 2 and x.shape[1] == 8
            and not (x.requires_grad and torch.is_grad_enabled()) and kernels() is not None)


def _tables(patterns: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The kernel's layout of the ``(256, 8)`` absolute patterns (built once)."""
    if not _TABLES:
        a = patterns.float().cpu()
        _TABLES.append((a.T.contiguous(), torch.round(2 * a).to(torch.int32).T.contiguous(),
                        a.pow(2).sum(1).contiguous()))
    return _TABLES[0]


def nearest_codes(x: Tensor, patterns: Tensor, threads: int | None = None) -> Tensor:
    """The nearest E8P codes ``(N,)`` int64 of the rows of ``x`` (check :func:`usable` first)
    for the absolute ``patterns`` (:func:`llvq.lattices.e8p.abs_patterns`), split over up to
    ``threads`` threads (default: torch's) of at least 4,096 rows each."""
    fns = kernels()
    if fns is None:
        raise RuntimeError("the C E8P kernel is unavailable")
    xc = x.detach().float().contiguous()
    n = xc.shape[0]
    codes = torch.empty(n, dtype=torch.int64)
    a_t, o_t, a_sq = _tables(patterns)

    def run(r0: int, r1: int) -> None:
        fns["e8p_nearest"](r0, r1, xc.data_ptr(), a_t.data_ptr(), o_t.data_ptr(),
                           a_sq.data_ptr(), codes.data_ptr())

    parts = min(threads or torch.get_num_threads(), n // _ROWS_PER_THREAD)
    if parts <= 1:
        run(0, n)
    else:
        bounds = [n * i // parts for i in range(parts + 1)]
        list(_pool(parts).map(run, bounds[:-1], bounds[1:]))
    return codes

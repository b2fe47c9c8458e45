"""Compiled Conway–Sloane decoders for D_n and D_n^+ (E8) (optional; CPU, one thread).

The C functions mirror :func:`llvq.lattices.fast.decode_dn` and the two-coset
:class:`llvq.lattices.fast.CosetDecoder` operation for operation, in the input's own precision
(float32 or float64), so the outputs are identical to the torch path, ties included: rounding
is ``rint`` (half to even, like ``torch.round``); the re-rounded coordinate is the first one
with the largest ``|x - round(x)|`` (like ``argmax``), moved by ``+1`` when that error is
``>= 0`` and ``-1`` otherwise; a row with a non-finite entry is just rounded (what the torch
ops give); of the two cosets ``D_n`` and ``D_n + 1/2`` the second wins only when strictly
closer. The parity of the coordinate sum is computed exactly (coordinate by coordinate), as
the torch path does. Squared distances are summed left to right; the torch reduction may
order the sum differently, which can only matter when the two cosets are within one rounding
error of a tie (never for exactly representable ties such as half-integer points).

Built and cached like :mod:`llvq.lattices._ckernel` (``cc``, ``$LLVQ_CACHE``, a unique
temporary name then ``os.replace``), with ``-O3 -march=native`` (plain ``-O3`` if that fails;
never ``-ffast-math``, which would break the rounding semantics); the cache key includes the
flags and the CPU, so a shared cache never serves a binary built for another machine. No
compiler, a failed build or ``LLVQ_NO_CKERNEL=1`` make :func:`kernels` return ``None`` (one
logged warning on failure) and the callers use torch. ``_KERNELS`` caches the outcome (tests
set it to ``[None]`` to force the fallback).
"""

from __future__ import annotations

import ctypes
import threading

import torch
from torch import Tensor

from llvq.lattices._ckernel import load_library, load_once

__all__ = ["decode_dn", "decode_dn_plus", "kernels", "usable"]


_SOURCE = r"""
#include <math.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

/* Scalar row: y = closest point of D_n to z (torch decode_dn, op for op). */
#define DN_ROW(T, RINT, FLOOR, FABS)                                                    \
static inline void dn_row_##T(int n, const T *restrict z, T *restrict y) {              \
    int k = 0, odd = 0, bad = 0;                                                        \
    T worst = (T)-1;                                                                    \
    for (int i = 0; i < n; ++i) {                                                       \
        T f = RINT(z[i]), d = z[i] - f, a = FABS(d), h = f * (T)0.5;                    \
        y[i] = f;                                                                       \
        if (a > worst) { worst = a; k = i; }                                            \
        odd ^= (h != FLOOR(h));                                                         \
        bad |= (d != d);                                                                \
    }                                                                                   \
    if (odd && !bad) y[k] += (z[k] - y[k] >= (T)0) ? (T)1 : (T)-1;                      \
}

#ifdef __AVX2__
static inline __m256 hmax_ps(__m256 v) {  /* max of the 8 lanes, broadcast */
    v = _mm256_max_ps(v, _mm256_permute2f128_ps(v, v, 1));
    v = _mm256_max_ps(v, _mm256_shuffle_ps(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm256_max_ps(v, _mm256_shuffle_ps(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
}
static inline __m256d hmax_pd(__m256d v) {
    v = _mm256_max_pd(v, _mm256_permute2f128_pd(v, v, 1));
    return _mm256_max_pd(v, _mm256_shuffle_pd(v, v, 5));
}
static inline float hsum_ps(__m256 v) {  /* lanes summed pairwise */
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
static inline double hsum_pd(__m256d v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}
static inline __m256 lanes_ps(unsigned bits) {  /* lane i all-ones iff bit i of bits */
    const __m256i lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_castsi256_ps(
        _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)bits), lane), lane));
}
static inline __m256d lanes_pd(unsigned bits) {
    const __m256i lane = _mm256_setr_epi64x(1, 2, 4, 8);
    return _mm256_castsi256_pd(
        _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_set1_epi64x(bits), lane), lane));
}
/* Vector row, n = m * L <= 64, in registers: the same result as the scalar row (the first
   largest rounding error re-rounded), branch-free (odd sums are a coin flip). */
#define DN_VEC(T, VT, L, S)                                                             \
static inline __attribute__((always_inline)) void dn_vrow_##T(int m, const VT *restrict x, VT *restrict y) {           \
    const VT half = _mm256_set1_##S((T)0.5), sign = _mm256_set1_##S((T)-0.0);           \
    const VT one = _mm256_set1_##S((T)1), mone = _mm256_set1_##S((T)-1);                \
    VT mx = _mm256_setzero_##S(), par = mx, bad = mx, av[16], dv[16];                     \
    for (int j = 0; j < m; ++j) {                                                       \
        VT f = _mm256_round_##S(x[j], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);   \
        VT h = _mm256_mul_##S(f, half);                                                 \
        y[j] = f;                                                                       \
        dv[j] = _mm256_sub_##S(x[j], f);                                                \
        av[j] = _mm256_andnot_##S(sign, dv[j]);                                         \
        mx = _mm256_max_##S(mx, av[j]);                                                 \
        par = _mm256_xor_##S(par, _mm256_cmp_##S(h, _mm256_floor_##S(h), _CMP_NEQ_OQ)); \
        bad = _mm256_or_##S(bad, _mm256_cmp_##S(dv[j], dv[j], _CMP_UNORD_Q));          \
    }                                                                                   \
    unsigned long long flag = (__builtin_popcount(_mm256_movemask_##S(par)) & 1)        \
                              & !_mm256_movemask_##S(bad);                              \
    mx = hmax_##S(mx);                                                                  \
    unsigned long long mk = 1ULL << (m * L - 1);  /* never empty */                     \
    for (int j = 0; j < m; ++j)                                                         \
        mk |= (unsigned long long)_mm256_movemask_##S(                                  \
            _mm256_cmp_##S(av[j], mx, _CMP_EQ_OQ)) << (j * L);                          \
    mk = (mk & -mk) & -flag;  /* one-hot first worst coordinate, or 0 if the sum is even */ \
    for (int j = 0; j < m; ++j) {                                                       \
        VT step = _mm256_blendv_##S(mone, one,                                          \
                                    _mm256_cmp_##S(dv[j], _mm256_setzero_##S(), _CMP_GE_OQ)); \
        y[j] = _mm256_blendv_##S(y[j], _mm256_add_##S(y[j], step),                      \
                                 lanes_##S((unsigned)(mk >> (j * L)) & ((1u << L) - 1))); \
    }                                                                                   \
}                                                                                       \
static inline __attribute__((always_inline)) void dn_vrows_##T(int m, long num, const T *restrict x, T *restrict y) {  \
    for (long p = 0; p < num; ++p, x += m * L, y += m * L) {                            \
        VT xv[16], yv[16];                                                                \
        for (int j = 0; j < m; ++j) xv[j] = _mm256_loadu_##S(x + j * L);                \
        dn_vrow_##T(m, xv, yv);                                                         \
        for (int j = 0; j < m; ++j) _mm256_storeu_##S(y + j * L, yv[j]);                \
    }                                                                                   \
}                                                                                       \
static inline __attribute__((always_inline)) void dnp_vrows_##T(int m, long num, const T *restrict x, T *restrict y) { \
    const VT half = _mm256_set1_##S((T)0.5);                                            \
    for (long p = 0; p < num; ++p, x += m * L, y += m * L) {                            \
        VT xv[16], zv[16], y0[16], y1[16], s0 = _mm256_setzero_##S(), s1 = s0;              \
        for (int j = 0; j < m; ++j) {                                                   \
            xv[j] = _mm256_loadu_##S(x + j * L);                                        \
            zv[j] = _mm256_sub_##S(xv[j], half);                                        \
        }                                                                               \
        dn_vrow_##T(m, xv, y0);                                                         \
        dn_vrow_##T(m, zv, y1);                                                         \
        for (int j = 0; j < m; ++j) {                                                   \
            y1[j] = _mm256_add_##S(y1[j], half);                                        \
            VT e0 = _mm256_sub_##S(xv[j], y0[j]), e1 = _mm256_sub_##S(xv[j], y1[j]);    \
            s0 = _mm256_add_##S(s0, _mm256_mul_##S(e0, e0));                            \
            s1 = _mm256_add_##S(s1, _mm256_mul_##S(e1, e1));                            \
        }                                                                               \
        /* the D_n + 1/2 point only when strictly closer */                             \
        VT c = _mm256_castsi256_##S(                                                    \
            _mm256_set1_epi64x(-(long long)(hsum_##S(s1) < hsum_##S(s0))));             \
        for (int j = 0; j < m; ++j)                                                     \
            _mm256_storeu_##S(y + j * L, _mm256_blendv_##S(y0[j], y1[j], c));           \
    }                                                                                   \
}
/* Float32 n = 8, eight rows at a time transposed (lane = row, vector = coordinate): the
   same operations, vertical. */
static inline __attribute__((always_inline)) void tr8(__m256 *r) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; ++i) {
        r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}
static inline __attribute__((always_inline)) void dn_soa8(const __m256 *x, __m256 *y) {
    const __m256 half = _mm256_set1_ps(0.5f), sign = _mm256_set1_ps(-0.0f);
    const __m256 one = _mm256_set1_ps(1.0f), mone = _mm256_set1_ps(-1.0f);
    __m256 d[8], a[8], mx = _mm256_setzero_ps(), par = mx, bad = mx, found = mx;
    for (int i = 0; i < 8; ++i) {
        __m256 f = _mm256_round_ps(x[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 h = _mm256_mul_ps(f, half);
        y[i] = f;
        d[i] = _mm256_sub_ps(x[i], f);
        a[i] = _mm256_andnot_ps(sign, d[i]);
        mx = _mm256_max_ps(mx, a[i]);
        par = _mm256_xor_ps(par, _mm256_cmp_ps(h, _mm256_floor_ps(h), _CMP_NEQ_OQ));
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(d[i], d[i], _CMP_UNORD_Q));
    }
    par = _mm256_andnot_ps(bad, par);
    for (int i = 0; i < 8; ++i) {
        __m256 sel = _mm256_andnot_ps(found, _mm256_cmp_ps(a[i], mx, _CMP_EQ_OQ));
        __m256 step = _mm256_blendv_ps(mone, one,
                                       _mm256_cmp_ps(d[i], _mm256_setzero_ps(), _CMP_GE_OQ));
        found = _mm256_or_ps(found, sel);
        y[i] = _mm256_blendv_ps(y[i], _mm256_add_ps(y[i], step), _mm256_and_ps(sel, par));
    }
}
static long dn_soa_float(long num, const float *x, float *y) {  /* rows done */
    long p = 0;
    for (; p + 8 <= num; p += 8, x += 64, y += 64) {
        __m256 xv[8], yv[8];
        for (int i = 0; i < 8; ++i) xv[i] = _mm256_loadu_ps(x + 8 * i);
        tr8(xv);
        dn_soa8(xv, yv);
        tr8(yv);
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(y + 8 * i, yv[i]);
    }
    return p;
}
static long dnp_soa_float(long num, const float *x, float *y) {
    const __m256 half = _mm256_set1_ps(0.5f);
    long p = 0;
    for (; p + 8 <= num; p += 8, x += 64, y += 64) {
        __m256 xv[8], zv[8], y0[8], y1[8], s0 = _mm256_setzero_ps(), s1 = s0, c;
        for (int i = 0; i < 8; ++i) xv[i] = _mm256_loadu_ps(x + 8 * i);
        tr8(xv);
        for (int i = 0; i < 8; ++i) zv[i] = _mm256_sub_ps(xv[i], half);
        dn_soa8(xv, y0);
        dn_soa8(zv, y1);
        for (int i = 0; i < 8; ++i) {
            y1[i] = _mm256_add_ps(y1[i], half);
            __m256 e0 = _mm256_sub_ps(xv[i], y0[i]), e1 = _mm256_sub_ps(xv[i], y1[i]);
            s0 = _mm256_add_ps(s0, _mm256_mul_ps(e0, e0));
            s1 = _mm256_add_ps(s1, _mm256_mul_ps(e1, e1));
        }
        c = _mm256_cmp_ps(s1, s0, _CMP_LT_OQ);  /* D_n + 1/2 only when strictly closer */
        for (int i = 0; i < 8; ++i) y0[i] = _mm256_blendv_ps(y0[i], y1[i], c);
        tr8(y0);
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(y + 8 * i, y0[i]);
    }
    return p;
}
#define SOA_float(FN) if (n == 8) { long p = FN##_soa_float(num, x, y); x += 8 * p; \
                                     y += 8 * p; num -= p; }
#define SOA_double(FN)
DN_VEC(float, __m256, 8, ps)
DN_VEC(double, __m256d, 4, pd)
#define VEC_CASES(T, FN, L)                                                             \
    case 1 * L: FN##_vrows_##T(1, num, x, y); return;                                   \
    case 2 * L: FN##_vrows_##T(2, num, x, y); return;                                   \
    case 3 * L: FN##_vrows_##T(3, num, x, y); return;                                   \
    case 4 * L: FN##_vrows_##T(4, num, x, y); return;                                   \
    case 6 * L: FN##_vrows_##T(6, num, x, y); return;                                   \
    default: if (n % L == 0 && n <= 64) { FN##_vrows_##T(n / L, num, x, y); return; }
#else
#define VEC_CASES(T, FN, L)
#define SOA_float(FN)
#define SOA_double(FN)
#endif

/* Scalar row of D_n^+ = D_n u (D_n + 1/2): torch CosetDecoder(decode_dn, [0, 1/2]). */
#define DNP_ROW(T)                                                                      \
static inline void dnp_row_##T(int n, const T *restrict x, T *restrict y) {             \
    T z[n], y1[n];                                                                      \
    T d0 = 0, d1 = 0;                                                                   \
    dn_row_##T(n, x, y);                                                                \
    for (int i = 0; i < n; ++i) { z[i] = x[i] - (T)0.5; }                               \
    dn_row_##T(n, z, y1);                                                               \
    for (int i = 0; i < n; ++i) {                                                       \
        T e0 = x[i] - y[i], e1;                                                         \
        y1[i] += (T)0.5;                                                                \
        e1 = x[i] - y1[i];                                                              \
        d0 += e0 * e0; d1 += e1 * e1;                                                   \
    }                                                                                   \
    if (d1 < d0) for (int i = 0; i < n; ++i) y[i] = y1[i];                              \
}
#define ENTRY(T, FN, L)                                                                 \
void FN##_##T(int n, long num, const T *x, T *y) {                                      \
    SOA_##T(FN)                                                                         \
    switch (n) { VEC_CASES(T, FN, L) }                                                  \
    for (long p = 0; p < num; ++p) FN##_row_##T(n, x + p * n, y + p * n);               \
}

DN_ROW(float, rintf, floorf, fabsf)
DN_ROW(double, rint, floor, fabs)
DNP_ROW(float)
DNP_ROW(double)
ENTRY(float, dn, 8)
ENTRY(double, dn, 4)
ENTRY(float, dnp, 8)
ENTRY(double, dnp, 4)
"""
# no FMA contraction: torch rounds (x - y)^2 before summing
_FLAGS = (["-O3", "-march=native", "-ffp-contract=off"], ["-O3", "-ffp-contract=off"])
MAX_DIM = 4096  # rows are kept on the C stack (two (n,) arrays)
_KERNELS: list = []  # [dict of ctypes functions or None], filled on first use
_LOCK = threading.Lock()


def _load() -> dict | None:
    return load_library(_SOURCE, "cfast", _FLAGS, {
        name: [ctypes.c_int, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        for name in ("dn_float", "dn_double", "dnp_float", "dnp_double")},
        "the C D_n/E8 decoders; using the slower torch decoders")


def kernels() -> dict | None:
    """The loaded C functions (compiled on first use), or ``None`` if unavailable or disabled."""
    return load_once(_KERNELS, _LOCK, _load)


def usable(x: Tensor) -> bool:
    """Whether ``x`` can go through the C decoders (CPU float32/64, no autograd, C built)."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and x.ndim > 0 and 0 < x.shape[-1] <= MAX_DIM
            and not (x.requires_grad and torch.is_grad_enabled())
            and kernels() is not None)


def _run(prefix: str, x: Tensor) -> Tensor:
    fns = kernels()
    if fns is None:
        raise RuntimeError("the C D_n decoders are unavailable")
    xc = x.detach().contiguous()
    out = torch.empty_like(xc, memory_format=torch.contiguous_format)
    n = x.shape[-1]
    num = xc.numel() // n
    if num:
        name = prefix + ("_float" if x.dtype == torch.float32 else "_double")
        fns[name](n, num, xc.data_ptr(), out.data_ptr())
    return out


def decode_dn(x: Tensor) -> Tensor:
    """Nearest point of D_n (C kernel; check :func:`usable` first)."""
    return _run("dn", x)


def decode_dn_plus(x: Tensor) -> Tensor:
    """Nearest point of D_n^+ = D_n u (D_n + 1/2) (C kernel; check :func:`usable` first)."""
    return _run("dnp", x)

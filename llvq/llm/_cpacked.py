"""C kernels of the packed GLVQ layer: a code-times-vector product and an unpacking to float.

The codes of one group of a layer are ``out`` rows of ``group_size`` unsigned integers of ``b``
bits, stored row by row in bit planes (the layout is in the C source and in
:func:`llvq.llm.packed.pack_rows`). ``code_matvec`` computes, for tokens ``t < T`` and rows ``r0 <= r < r1``,

    y[t, r] = sum_g sum_i code[g, r, i] * z[t, g * gs + i]

over the groups not flagged ``skip``; ``code_unpack`` writes ``code - offset[g]`` as float32 into
an ``(out, M * gs)`` matrix (for many tokens at once, where a matrix product wins);
``e8p_matvec`` is ``code_matvec`` for E8P groups (each vector's 8 base-4 digits are its 16-bit
code, decoded from its absolute pattern, sign bits and shift through two small tables that
stay in the L1 cache; each vector is decoded once for all ``T <= MAX_TOKENS`` tokens).
``hrot`` applies an incoherence rotation from its factors and ``group_transform`` the
per-group ``d x d`` transforms, so that a packed layer on one token is a few C calls.
``int8_matvec`` multiplies rows of int8 with one scale each (an embedding table stored in int8
and used as the output head, :class:`llvq.llm.packed.Int8Linear`) by up to ``MAX_TOKENS``
vectors, ``int4_matvec`` the same for rows of 4-bit codes in blocks of 32 with a float16 scale
and minimum each (:class:`llvq.llm.packed.Int4Linear`); ``fwht`` is the fast Walsh–Hadamard transform of incoherence processing.

Built and cached like :mod:`llvq.lattices._cfast` (``cc -O3 -march=native``, then plain ``-O3``;
``$LLVQ_CACHE``; ``LLVQ_NO_CKERNEL=1`` disables it). :func:`kernels` returns ``None`` when no
kernel can be built; :class:`llvq.llm.packed.GLVQLinear` then uses its torch path.
"""

from __future__ import annotations

import ctypes
import threading

from llvq.lattices._ckernel import load_library, load_once

__all__ = ["HROT_MAX_M", "MAX_TOKENS", "kernels"]

MAX_TOKENS = 8  # up to this many tokens the matvec kernel; more: unpack once + a matrix product
HROT_MAX_M = 64  # the widest odd factor m of a rotation `hrot` takes (n = 2^k m)

_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#if defined(__BMI2__)
#include <immintrin.h>
#endif

/* Layout (see llvq.llm.packed.pack_rows): the codes of one row of one group are split into bit
   planes of widths w in {8, 4, 2, 1} (the binary digits of b, low planes first); a plane of
   width w holds per = 8 / w fields per byte, nb = ceil(gs / per) bytes, and field k of byte j
   is bits [shift, shift + w) of code k * nb + j (codes past gs are zero). */

static inline int plane_bytes(int gs, int w) { int per = 8 / w; return (gs + per - 1) / per; }

/* acc += sum_i field_i * z[i] for one plane of width W: eight bytes are loaded once
   and each of their 8 / W fields meets its eight consecutive z (AVX2 + FMA when available). */
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
static inline float hsum8(__m256 v) {  /* the sum of the 8 lanes */
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}
typedef struct { __m256 a0, a1; float tail; } acc_t;
static inline void acc_zero(acc_t *a) { a->a0 = _mm256_setzero_ps(); a->a1 = _mm256_setzero_ps(); a->tail = 0.0f; }
static inline float acc_sum(const acc_t *acc) {
    return hsum8(_mm256_add_ps(acc->a0, acc->a1)) + acc->tail;
}
static inline void acc_add_scaled(acc_t *acc, const acc_t *p, float s) {
    const __m256 v = _mm256_set1_ps(s);
    acc->a0 = _mm256_fmadd_ps(p->a0, v, acc->a0);
    acc->a1 = _mm256_fmadd_ps(p->a1, v, acc->a1);
    acc->tail += p->tail * s;
}
static inline __attribute__((always_inline)) __m256i field(__m256i c, int k, int W, __m256i mask) {
    return _mm256_and_si256(_mm256_srli_epi32(c, k * W), mask);
}
static inline __attribute__((always_inline)) void plane_acc(const uint8_t *p, const float *z, int gs, int W, acc_t *acc) {
    const int per = 8 / W, nb = plane_bytes(gs, W);
    const __m256i mask = _mm256_set1_epi32((1 << W) - 1);
    int j = 0;
    if (per * nb == gs) {  /* every field full: the common case (group_size % 8 == 0) */
        for (; j + 8 <= nb; j += 8) {
            const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + j)));
            int k = 0;
            for (; k + 2 <= per; k += 2) {
                __m256i f0 = field(c, k, W, mask), f1 = field(c, k + 1, W, mask);
                acc->a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(f0), _mm256_loadu_ps(z + k * nb + j), acc->a0);
                acc->a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(f1), _mm256_loadu_ps(z + k * nb + nb + j), acc->a1);
            }
            if (k < per)  /* W = 8: one field */
                acc->a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(field(c, k, W, mask)),
                                          _mm256_loadu_ps(z + k * nb + j), acc->a0);
        }
    }
    for (int k = 0; k < per; ++k) {  /* what is left: partial fields or bytes */
        int n = gs - k * nb; if (n > nb) n = nb;
        for (int i = j; i < n; ++i)
            acc->tail += (float)((p[i] >> (k * W)) & ((1u << W) - 1u)) * z[k * nb + i];
    }
}
#else
typedef struct { float lane[8]; float tail; } acc_t;
static inline void acc_zero(acc_t *a) { memset(a, 0, sizeof(*a)); }
static inline float acc_sum(const acc_t *a) {
    float s = a->tail;
    for (int l = 0; l < 8; ++l) s += a->lane[l];
    return s;
}
static inline void acc_add_scaled(acc_t *acc, const acc_t *p, float s) {
    for (int l = 0; l < 8; ++l) acc->lane[l] += p->lane[l] * s;
    acc->tail += p->tail * s;
}
static inline __attribute__((always_inline)) void plane_acc(const uint8_t *p, const float *z, int gs, int W, acc_t *acc) {
    const int per = 8 / W, nb = plane_bytes(gs, W);
    const unsigned mask = (1u << W) - 1u;
    for (int k = 0; k < per; ++k) {
        const float *zk = z + k * nb;
        int n = gs - k * nb; if (n > nb) n = nb;
        int j = 0;
        for (; j + 8 <= n; j += 8)
            for (int l = 0; l < 8; ++l)
                acc->lane[l] += (float)((p[j + l] >> (k * W)) & mask) * zk[j + l];
        for (; j < n; ++j) acc->tail += (float)((p[j] >> (k * W)) & mask) * zk[j];
    }
}
#endif

static inline void segment_acc(const uint8_t *seg, const float *z, int gs, int b, acc_t *acc) {
    int shift = 0;
    while (shift < b) {
        int left = b - shift;
        int w = left >= 8 ? 8 : (left & 1) ? 1 : (left & 2) ? 2 : 4;
        acc_t part, *into = shift ? &part : acc;  /* higher planes: summed, then scaled */
        if (shift) acc_zero(&part);
        switch (w) {  /* a copy per width: constant loop bounds and shifts */
            case 1: plane_acc(seg, z, gs, 1, into); break;
            case 2: plane_acc(seg, z, gs, 2, into); break;
            case 4: plane_acc(seg, z, gs, 4, into); break;
            default: plane_acc(seg, z, gs, 8, into);
        }
        if (shift) acc_add_scaled(acc, &part, (float)(1u << shift));
        seg += plane_bytes(gs, w);
        shift += w;
    }
}

/* y[t * ys + r] = sum over groups g (skip[g] == 0) of codes(g, r) . z[t, g*gs : (g+1)*gs]. */
void code_matvec(long r0, long r1, int T, int M, int gs, const int32_t *bits, const int64_t *off,
                 const int32_t *skip, const int64_t *stride, const uint8_t *bytes, const float *z,
                 float *y, long ys) {
    const long zs = (long)M * gs;
    for (long r = r0; r < r1; ++r) {
        for (int t = 0; t < T; ++t) {
            acc_t acc;
            acc_zero(&acc);
            for (int g = 0; g < M; ++g) {
                if (skip[g]) continue;
                segment_acc(bytes + off[g] + r * stride[g], z + t * zs + (long)g * gs, gs, bits[g],
                            &acc);
            }
            y[t * ys + r] = acc_sum(&acc);
        }
    }
}

/* E8P groups (2-bit digits, one plane: code i of a row is field i / nb of byte i % nb, nb = gs / 4).
   The 8 digits of vector v (least significant first) make its 16-bit code
   c = abs * 256 + neg7 * 2 + shift (llvq.lattices.e8p): the point is s * pat[abs] + (shift ? -1/4
   : 1/4) with s_i = -1 where bit i of neg7 is set (i < 7) and s_7 set by the parity rule,
   negative iff par[abs] (= (sum_i 2 pat[abs]_i mod 4) / 2) differs from popcount(neg7) mod 2.
   The tables fold that rule in: patp = pat with lane 7 negated where par[abs], and for the low
   byte l = neg7 * 2 + shift, lo[l] = {the float sign bits of the 8 lanes (lane 7: popcount(neg7)
   mod 2), then 8 x (shift ? -1/4 : 1/4)}; so point = (patp[abs] ^ lo[l][0:8]) + lo[l][8:16],
   two loads from 24 KB that stay in L1.
   y[t, r] = sum_g sum_v point . z[t, g * gs + 8 v ...]. */
static inline int e8p_digits(uint64_t w, int k) {
    /* the low 2 bits of field k of 8 consecutive bytes, byte c -> bits 2c, 2c + 1 */
    w = w >> (2 * k);
#if defined(__BMI2__)
    return (int)_pext_u64(w, 0x0303030303030303ULL);
#else
    w &= 0x0303030303030303ULL;
    return (int)((w & 3) | ((w >> 6) & 0xC) | ((w >> 12) & 0x30) | ((w >> 18) & 0xC0)
                 | ((w >> 24) & 0x300) | ((w >> 30) & 0xC00) | ((w >> 36) & 0x3000)
                 | ((w >> 42) & 0xC000));
#endif
}

static inline int e8p_code(const uint8_t *seg, int nb, int v) {
    int idx = 0;
    for (int c = 0; c < 8; ++c) {
        int i = 8 * v + c;
        idx |= ((seg[i % nb] >> (2 * (i / nb))) & 3) << (2 * c);
    }
    return idx;
}

/* code of vector v of a row segment; with 8 | nb, v = k * per + jj is bytes 8 jj ... 8 jj + 7,
   field k (per = nb / 8), otherwise the general gather */
static inline int e8p_code_at(const uint8_t *seg, int nb, int per, int v) {
    if (!per) return e8p_code(seg, nb, v);
    int k = 0, jj = v;
    while (jj >= per) { jj -= per; ++k; }  /* k < 4: no division */
    uint64_t w;
    memcpy(&w, seg + 8 * jj, 8);
    return e8p_digits(w, k);
}

#if defined(__AVX2__) && defined(__FMA__)
static inline __m256 e8p_point(int c, const float *patp, const float *lo) {
    const float *l = lo + 16 * (c & 255);
    const __m256 p = _mm256_xor_ps(_mm256_loadu_ps(patp + 8 * (c >> 8)), _mm256_loadu_ps(l));
    return _mm256_add_ps(p, _mm256_loadu_ps(l + 8));
}
#define E8P_FMA(c, zz, acc) acc = _mm256_fmadd_ps(e8p_point((c), patp, lo), (zz), acc)
#else
static inline void e8p_point(int c, const float *patp, const float *lo, float *p) {
    const float *pa = patp + 8 * (c >> 8), *l = lo + 16 * (c & 255);
    for (int i = 0; i < 8; ++i) {
        uint32_t u, m;
        memcpy(&u, pa + i, 4);
        memcpy(&m, l + i, 4);
        u ^= m;
        memcpy(p + i, &u, 4);
        p[i] += l[8 + i];
    }
}
#endif

void e8p_matvec(long r0, long r1, int T, int M, int gs, const int64_t *off, const int32_t *skip,
                const int64_t *stride, const uint8_t *bytes, const float *patp, const float *lo,
                const float *z, float *y, long ys) {
    const long zs = (long)M * gs;
    const int nb = gs / 4, nv = gs / 8, per = nb % 8 == 0 ? nb / 8 : 0;
    long r = r0;
#if defined(__AVX2__) && defined(__FMA__)
    if (T == 1 && per) {  /* one token: two rows at a time (the z loads shared), the 4 vectors
                             of each 8-byte word on 4 accumulators per row */
        for (; r + 2 <= r1; r += 2) {
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            for (int g = 0; g < M; ++g) {
                if (skip[g]) continue;
                const uint8_t *sa = bytes + off[g] + r * stride[g], *sb = sa + stride[g];
                const float *zg = z + (long)g * gs;
                for (int jj = 0; jj < per; ++jj) {
                    uint64_t wa, wb;
                    memcpy(&wa, sa + 8 * jj, 8);
                    memcpy(&wb, sb + 8 * jj, 8);
                    const float *zv = zg + 8 * jj;
                    const __m256 z0 = _mm256_loadu_ps(zv), z1 = _mm256_loadu_ps(zv + 8 * per);
                    const __m256 z2 = _mm256_loadu_ps(zv + 16 * per);
                    const __m256 z3 = _mm256_loadu_ps(zv + 24 * per);
                    E8P_FMA(e8p_digits(wa, 0), z0, a0);
                    E8P_FMA(e8p_digits(wb, 0), z0, b0);
                    E8P_FMA(e8p_digits(wa, 1), z1, a1);
                    E8P_FMA(e8p_digits(wb, 1), z1, b1);
                    E8P_FMA(e8p_digits(wa, 2), z2, a2);
                    E8P_FMA(e8p_digits(wb, 2), z2, b2);
                    E8P_FMA(e8p_digits(wa, 3), z3, a3);
                    E8P_FMA(e8p_digits(wb, 3), z3, b3);
                }
            }
            y[r] = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
            y[r + 1] = hsum8(_mm256_add_ps(_mm256_add_ps(b0, b1), _mm256_add_ps(b2, b3)));
        }
    }
#endif
    for (; r < r1; ++r) {  /* each vector decoded once for all T <= 8 tokens */
#if defined(__AVX2__) && defined(__FMA__)
        __m256 acc[8];
        for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
#else
        float acc[8];
        for (int t = 0; t < T; ++t) acc[t] = 0.0f;
#endif
        for (int g = 0; g < M; ++g) {
            if (skip[g]) continue;
            const uint8_t *seg = bytes + off[g] + r * stride[g];
            for (int v = 0; v < nv; ++v) {
                const int c = e8p_code_at(seg, nb, per, v);
                const float *zv = z + (long)g * gs + 8 * v;
#if defined(__AVX2__) && defined(__FMA__)
                const __m256 p = e8p_point(c, patp, lo);
                for (int t = 0; t < T; ++t)
                    acc[t] = _mm256_fmadd_ps(p, _mm256_loadu_ps(zv + t * zs), acc[t]);
#else
                float p[8];
                e8p_point(c, patp, lo, p);
                for (int t = 0; t < T; ++t)
                    for (int i = 0; i < 8; ++i) acc[t] += p[i] * zv[t * zs + i];
#endif
            }
        }
#if defined(__AVX2__) && defined(__FMA__)
        for (int t = 0; t < T; ++t) y[t * ys + r] = hsum8(acc[t]);
#else
        for (int t = 0; t < T; ++t) y[t * ys + r] = acc[t];
#endif
    }
}

/* out[r, g*gs + i] = code(g, r, i) - offset[g] for rows r0 <= r < r1 (skip[g]: left as is). */
void code_unpack(long r0, long r1, int M, int gs, const int32_t *bits, const int64_t *off,
                 const int32_t *skip, const int64_t *stride, const float *offset,
                 const uint8_t *bytes, float *out) {
    const long width = (long)M * gs;
    for (long r = r0; r < r1; ++r) {
        for (int g = 0; g < M; ++g) {
            if (skip[g]) continue;
            float *o = out + r * width + (long)g * gs;
            for (int i = 0; i < gs; ++i) o[i] = -offset[g];
            const uint8_t *seg = bytes + off[g] + r * stride[g];
            int shift = 0, b = bits[g];
            while (shift < b) {
                int left = b - shift;
                int w = left >= 8 ? 8 : (left & 1) ? 1 : (left & 2) ? 2 : 4;
                int per = 8 / w, nb = plane_bytes(gs, w);
                unsigned mask = (1u << w) - 1u;
                for (int k = 0; k < per; ++k)
                    for (int j = 0; j < nb && k * nb + j < gs; ++j)
                        o[k * nb + j] += (float)(((seg[j] >> (k * w)) & mask) << shift);
                seg += nb;
                shift += w;
            }
        }
    }
}

/* y[t * ys + r] = scale[r] * sum_j w[r * n + j] * x[t * n + j] for rows r0 <= r < r1 and
   tokens t < T <= 8: rows of int8 with one scale each (an embedding table used as the head). */
void int8_matvec(long r0, long r1, int T, int n, const int8_t *w, const float *scale,
                 const float *x, float *y, long ys) {
    long r = r0;
#if defined(__AVX2__) && defined(__FMA__)
    if (T == 1) {  /* one token: four rows at a time, four independent accumulator chains */
        for (; r + 4 <= r1; r += 4) {
            const int8_t *row = w + r * n;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            int j = 0;
            for (; j + 8 <= n; j += 8) {
                const __m256 xv = _mm256_loadu_ps(x + j);
#define I8(q) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(row + (long)(q) * n + j))))
                a0 = _mm256_fmadd_ps(I8(0), xv, a0);
                a1 = _mm256_fmadd_ps(I8(1), xv, a1);
                a2 = _mm256_fmadd_ps(I8(2), xv, a2);
                a3 = _mm256_fmadd_ps(I8(3), xv, a3);
#undef I8
            }
            const __m256 acc[4] = {a0, a1, a2, a3};
            for (int q = 0; q < 4; ++q) {
                float s = hsum8(acc[q]);
                for (int i = j; i < n; ++i) s += (float)row[(long)q * n + i] * x[i];
                y[r + q] = s * scale[r + q];
            }
        }
    }
#endif
    for (; r < r1; ++r) {
        const int8_t *row = w + r * n;
        float sum[8];
#if defined(__AVX2__) && defined(__FMA__)
        __m256 acc[8];
        for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
        int j = 0;
        for (; j + 8 <= n; j += 8) {
            const __m256 v = _mm256_cvtepi32_ps(
                _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(row + j))));
            for (int t = 0; t < T; ++t)
                acc[t] = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + (long)t * n + j), acc[t]);
        }
        for (int t = 0; t < T; ++t) sum[t] = hsum8(acc[t]);
#else
        int j = 0;
        for (int t = 0; t < T; ++t) sum[t] = 0.0f;
#endif
        for (int t = 0; t < T; ++t) {
            const float *xt = x + (long)t * n;
            float s = sum[t];
            for (int i = j; i < n; ++i) s += (float)row[i] * xt[i];
            y[t * ys + r] = s * scale[r];
        }
    }
}

/* IEEE half (float16 bits) to float, subnormals included. */
static inline float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint32_t f;
    if (e == 0) {
        const float v = (float)m * 5.9604644775390625e-08f;  /* m * 2^-24 */
        return sign ? -v : v;
    }
    f = e == 31 ? (sign | 0x7f800000u | (m << 13)) : (sign | ((e + 112) << 23) | (m << 13));
    float out;
    memcpy(&out, &f, sizeof out);
    return out;
}

/* y[t * ys + r] = sum_b (scale[r, b] * sum_i c[r, b, i] x[t, 32 b + i] + low[r, b] * xsum[t, b])
   for rows r0 <= r < r1 and tokens t < T <= 8: rows of 4-bit codes in blocks of 32 with a
   float16 scale and minimum each (an embedding table used as the head; n % 32 == 0). Byte j of
   a block's 16 holds code j in its low nibble and code j + 16 in its high one; xsum[t, b] is
   the sum of token t's 32 entries of block b. */
void int4_matvec(long r0, long r1, int T, int n, const uint8_t *q, const uint16_t *scale,
                 const uint16_t *low, const float *x, const float *xsum, float *y, long ys) {
    const int nb = n / 32;
    for (long r = r0; r < r1; ++r) {
        const uint8_t *row = q + r * (long)(n / 2);
        float sum[8], lows[8];
        for (int t = 0; t < T; ++t) sum[t] = lows[t] = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
        __m256 acc[8];
        for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
        const __m128i mask = _mm_set1_epi8(0x0F);
#endif
        for (int b = 0; b < nb; ++b) {
            const float s = half_to_float(scale[r * nb + b]), m = half_to_float(low[r * nb + b]);
            const uint8_t *blk = row + 16 * b;
            for (int t = 0; t < T; ++t) lows[t] += m * xsum[(long)t * nb + b];
#if defined(__AVX2__) && defined(__FMA__)
            const __m128i raw = _mm_loadu_si128((const __m128i *)blk);
            const __m128i lo = _mm_and_si128(raw, mask), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
            const __m256 v0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
            const __m256 v1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
            const __m256 v2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
            const __m256 v3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
            const __m256 sv = _mm256_set1_ps(s);
            for (int t = 0; t < T; ++t) {
                const float *xt = x + (long)t * n + 32 * b;
                __m256 p = _mm256_mul_ps(v0, _mm256_loadu_ps(xt));
                p = _mm256_fmadd_ps(v1, _mm256_loadu_ps(xt + 8), p);
                p = _mm256_fmadd_ps(v2, _mm256_loadu_ps(xt + 16), p);
                p = _mm256_fmadd_ps(v3, _mm256_loadu_ps(xt + 24), p);
                acc[t] = _mm256_fmadd_ps(p, sv, acc[t]);
            }
#else
            for (int t = 0; t < T; ++t) {
                const float *xt = x + (long)t * n + 32 * b;
                float p = 0.0f;
                for (int j = 0; j < 16; ++j)
                    p += (float)(blk[j] & 15) * xt[j] + (float)(blk[j] >> 4) * xt[j + 16];
                sum[t] += s * p;
            }
#endif
        }
#if defined(__AVX2__) && defined(__FMA__)
        for (int t = 0; t < T; ++t) sum[t] = hsum8(acc[t]);
#endif
        for (int t = 0; t < T; ++t) y[t * ys + r] = sum[t] + lows[t];
    }
}

/* In place, for each of `count` matrices (n, m) (row-major): x <- H_n x * norm (n = 2^k). */
void fwht(long count, int n, int m, float *x, float norm) {
    for (long c = 0; c < count; ++c) {
        float *a = x + c * (long)n * m;
        for (int h = 1; h < n; h *= 2)
            for (int i = 0; i < n; i += 2 * h)
                for (int j = i; j < i + h; ++j) {
                    float *p = a + (long)j * m, *q = a + (long)(j + h) * m;
                    for (int k = 0; k < m; ++k) {
                        float u = p[k], v = q[k];
                        p[k] = u + v;
                        q[k] = u - v;
                    }
                }
        for (long k = 0; k < (long)n * m; ++k) a[k] *= norm;
    }
}

/* Incoherence rotation of T rows of width n = p * m (llvq.llm.incoherence.rotation_factors):
   forward (transpose = 0): y = vec(H_p X Q^T), X the (p, m) row-major view of signs * x;
   transpose: y = signs * vec(H_p Y Q), Y the view of pre * x (pre: per-entry factors, or NULL).
   H_p is normalized (norm = 1 / sqrt(p)); q is (m, m) row-major (ignored when m = 1);
   m <= HROT_MAX_M (the caller checks: HROT_MAX_M in Python). */
#define HROT_MAX_M 64
void hrot(long T, int p, int m, const float *signs, const float *q, const float *pre,
          const float *x, float *y, int transpose, float norm) {
    const long n = (long)p * m;
    float buf[HROT_MAX_M];  /* one row of the product with Q */
    for (long t = 0; t < T; ++t) {
        const float *xt = x + t * n;
        float *yt = y + t * n;
        if (!transpose) {
            for (long i = 0; i < n; ++i) yt[i] = xt[i] * signs[i];
            fwht(1, p, m, yt, norm);
        } else {
            for (long i = 0; i < n; ++i) yt[i] = pre ? xt[i] * pre[i] : xt[i];
        }
        if (m > 1) {  /* row i of the view times Q^T (forward) or Q (transpose) */
            for (int i = 0; i < p; ++i) {
                float *row = yt + (long)i * m;
                for (int j = 0; j < m; ++j) {
                    float acc = 0.0f;
                    for (int k = 0; k < m; ++k)
                        acc += row[k] * (transpose ? q[k * m + j] : q[j * m + k]);
                    buf[j] = acc;
                }
                memcpy(row, buf, sizeof(float) * m);
            }
        }
        if (transpose) {
            fwht(1, p, m, yt, norm);
            for (long i = 0; i < n; ++i) yt[i] *= signs[i];
        }
    }
}

/* z[t, g, j, :] = x[t, g, j, :] @ tr[g] for T rows of M groups of nv vectors of width d
   (tr: (M, d, d) row-major, the transforms s_g G_g^T of a packed GLVQ layer). */
void group_transform(long T, int M, int nv, int d, const float *tr, const float *x, float *z) {
    const long width = (long)M * nv * d;
    for (long t = 0; t < T; ++t)
        for (int g = 0; g < M; ++g) {
            const float *a = tr + (long)g * d * d;
            for (int j = 0; j < nv; ++j) {
                const long o = t * width + ((long)g * nv + j) * d;
                for (int c = 0; c < d; ++c) z[o + c] = 0.0f;
                for (int k = 0; k < d; ++k) {
                    const float v = x[o + k];
                    for (int c = 0; c < d; ++c) z[o + c] += v * a[k * d + c];
                }
            }
        }
}
"""
_FLAGS = (["-O3", "-march=native"], ["-O3"])
_KERNELS: list = []
_LOCK = threading.Lock()
_VP, _L, _I, _F = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float
_SIGNATURES = {
    "code_matvec": [_L, _L, _I, _I, _I, _VP, _VP, _VP, _VP, _VP, _VP, _VP, _L],
    "code_unpack": [_L, _L, _I, _I, _VP, _VP, _VP, _VP, _VP, _VP, _VP],
    "e8p_matvec": [_L, _L, _I, _I, _I, _VP, _VP, _VP, _VP, _VP, _VP, _VP, _VP, _L],
    "fwht": [_L, _I, _I, _VP, _F],
    "hrot": [_L, _I, _I, _VP, _VP, _VP, _VP, _VP, _I, _F],
    "group_transform": [_L, _I, _I, _I, _VP, _VP, _VP],
    "int8_matvec": [_L, _L, _I, _I, _VP, _VP, _VP, _VP, _L],
    "int4_matvec": [_L, _L, _I, _I, _VP, _VP, _VP, _VP, _VP, _VP, _L],
}


def _load() -> dict | None:
    return load_library(_SOURCE, "cpacked", _FLAGS, _SIGNATURES,
                        "the packed GLVQ kernels; packed layers use the slower torch path")


def kernels() -> dict | None:
    """The loaded C functions (compiled on first use), or ``None`` if unavailable or disabled."""
    return load_once(_KERNELS, _LOCK, _load)

"""A GLVQ-quantized linear layer that keeps its codes packed and decodes on the fly.

For a group ``g`` that does not compand, row ``r`` of the (rotated) weight is, on each vector
``j`` of ``d`` consecutive columns, ``W'[r, j] = ρ_r s_g ((c_{rj} - o_g) G_g)`` with ``c`` the
stored unsigned codes, ``o_g = 2^(b_g - 1) - 1/2``, ``s_g`` the group scale and ``ρ_r`` the row
scale. Hence for an input ``x``

    (W' x)_r = ρ_r sum_g sum_j (c_{rj} - o_g) . z_{gj},    z_{gj} = s_g G_g x_{gj}

so a product with the codes themselves, after a ``d x d`` transform of the input per vector
(``M n / d`` small products instead of ``out x in`` decodes). :class:`GLVQLinear` stores the
codes bit-packed (``b_g`` bits each, in bit planes: :func:`pack_rows`) and
computes that product with a C kernel (:mod:`llvq.llm._cpacked`): for up to
``MAX_TOKENS`` tokens directly from the packed bits, for more by unpacking to a float matrix
for one matrix product. Groups that compand (a µ-law after ``G``, rare after incoherence
processing) are decoded once at load and kept as a float32 block. With incoherence processing
the layer applies ``V`` to the input and ``U^T`` to the output from their factors
(a fast Walsh–Hadamard transform, a small orthogonal ``Q`` and signs), never as ``n x n``
matrices.

Layers coded with E8P (``model.glvq.code=e8p``) keep their 16-bit codes packed the same way (8
base-4 digits per vector); ``c_{rj} - o_g`` is then the E8P point ``P[c_{rj}]``, so every
forward unpacks the layer's codes to a float32 matrix of points (a lookup in the shared
65,536 x 8 table) for one matrix product: the codes stay packed in memory, the float matrix
lives only during the call.

Without a C compiler every step has a torch path (slower; same results within float
rounding). :func:`llvq.llm.io.load_quantized` with ``packed=True`` builds these layers from an
export.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llvq.lattices import e8p
from llvq.llm._cpacked import HROT_MAX_M, MAX_TOKENS, kernels
from llvq.llm.groups import LayerResult, held_mu, round_side
from llvq.llm.incoherence import hadamard, rotation_factors
from llvq.quantizers.glvq import GLVQState, GroupedLatticeQuantizer

__all__ = ["GLVQLinear", "Int4Embedding", "Int4Linear", "Int8Embedding", "Int8Linear", "int4_blocks",
           "int4_dequantize", "int8_rows", "pack_rows", "planes",
           "row_bytes", "unpack_rows"]

_POOL: list[ThreadPoolExecutor] = []


def _pool() -> ThreadPoolExecutor | None:
    threads = torch.get_num_threads()
    if threads < 2:
        return None
    if not _POOL or _POOL[0]._max_workers != threads:
        if _POOL:
            _POOL.pop().shutdown(wait=False)
        _POOL.append(ThreadPoolExecutor(threads, thread_name_prefix="llvq-packed"))
    return _POOL[0]


def _split_rows(run, rows: int) -> None:
    """``run(r0, r1)`` over ``[0, rows)``, split over :func:`_pool`'s threads (ctypes releases
    the GIL) when there are enough rows."""
    pool = _pool()
    if pool is None or rows < 64:
        run(0, rows)
        return
    n = pool._max_workers
    bounds = [rows * i // n for i in range(n + 1)]
    # the first part here, the others on the pool: one hand-off fewer, no idle caller
    parts = [pool.submit(run, bounds[i], bounds[i + 1]) for i in range(1, n)]
    try:
        run(bounds[0], bounds[1])
    finally:  # never return (or raise) while a part still writes into the output
        for part in parts:
            part.result()


def planes(bits: int) -> list[tuple[int, int]]:
    """The bit planes ``(width, shift)`` of a ``bits``-bit code, low first (widths 8, 4, 2, 1)."""
    out, shift = [], 0
    while shift < bits:
        left = bits - shift
        w = 8 if left >= 8 else 1 if left & 1 else 2 if left & 2 else 4
        out.append((w, shift))
        shift += w
    return out


def _plane_bytes(group_size: int, width: int) -> int:
    return math.ceil(group_size / (8 // width))


def row_bytes(group_size: int, bits: int) -> int:
    """Bytes of one row of one group: ``group_size * bits / 8`` when ``group_size % 8 == 0``."""
    return sum(_plane_bytes(group_size, w) for w, _ in planes(bits))


def pack_rows(codes: Tensor, bits: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Pack ``(M, out, gs)`` unsigned codes, group by group and row by row, into bit planes.

    A ``b``-bit code is split into planes of widths 8, 4, 2 and 1 (:func:`planes`); a plane of
    width ``w`` packs ``8 / w`` fields per byte into ``nb = ceil(gs w / 8)`` bytes, field ``k``
    of byte ``j`` holding code ``k nb + j``, so unpacking one field of consecutive bytes gives
    consecutive codes (what the kernel vectorizes). Returns ``(bytes, offsets, strides)``:
    uint8 data, the first byte of each group, and each group's bytes per row.
    """
    _, out, gs = codes.shape
    parts, offsets, strides, pos = [], [], [], 0
    c_all = codes.to(torch.int64).numpy()
    for g, b in enumerate(bits):
        c = c_all[g]
        if c.size and (int(c.min()) < 0 or int(c.max()) >= 2**b):
            raise ValueError(f"group {g}: codes outside [0, 2^{b})")
        rows = []
        for w, shift in planes(b):
            per, nb = 8 // w, _plane_bytes(gs, w)
            v = np.zeros((out, per * nb), dtype=np.int64)
            v[:, :gs] = (c >> shift) & (2**w - 1)
            fields = v.reshape(out, per, nb) << (np.arange(per, dtype=np.int64) * w)[None, :, None]
            rows.append(fields.sum(axis=1).astype(np.uint8))
        seg = np.concatenate(rows, axis=1)
        parts.append(seg.reshape(-1))
        offsets.append(pos)
        strides.append(seg.shape[1])
        pos += seg.size
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)
    return (torch.from_numpy(flat), torch.tensor(offsets, dtype=torch.int64),
            torch.tensor(strides, dtype=torch.int64))


def unpack_rows(data: Tensor, offsets: Tensor, bits: list[int], out: int, gs: int) -> Tensor:
    """Inverse of :func:`pack_rows`: ``(M, out, gs)`` int64 codes (torch only)."""
    res = []
    for g, b in enumerate(bits):
        seg = data[int(offsets[g]): int(offsets[g]) + out * row_bytes(gs, b)].view(out, -1)
        codes, col = torch.zeros(out, gs, dtype=torch.int64), 0
        for w, shift in planes(b):
            per, nb = 8 // w, _plane_bytes(gs, w)
            byte = seg[:, col:col + nb].to(torch.int64)
            fields = (byte[:, None, :] >> (torch.arange(per) * w)[None, :, None]) & (2**w - 1)
            codes += fields.reshape(out, per * nb)[:, :gs] << shift
            col += nb
        res.append(codes)
    return torch.stack(res) if res else torch.zeros(0, out, gs, dtype=torch.int64)


def _native(x: Tensor) -> dict | None:
    """The C kernels if they may compute on ``x`` (float32 on the CPU, no gradient wanted: they
    work outside autograd), else ``None`` (the torch path)."""
    if x.dtype != torch.float32 or x.device.type != "cpu" \
            or (x.requires_grad and torch.is_grad_enabled()):
        return None
    return kernels()


class _Rotation(nn.Module):
    """``x -> T x`` (or ``T^T x``) for the randomized Hadamard transform of ``(n, seed)``."""

    def __init__(self, n: int, seed: int) -> None:
        super().__init__()
        p, q, signs = rotation_factors(n, seed)
        self.n, self.p = n, p
        self.m = n // p
        self.register_buffer("signs", signs.float().contiguous())
        # contiguous: the C kernel reads it row-major (a QR factor comes column-major)
        self.register_buffer("q", (q if q is not None else torch.ones(1, 1)).float().contiguous())
        self.h: Tensor | None = None  # H_p for the torch path, built on first use

    def _hadamard(self, x: Tensor) -> Tensor:
        """``H_p`` along dim 1 of ``x`` ``(T, p, m)`` (normalized)."""
        fns = _native(x)
        if fns is not None and self.p > 1:  # in place
            x = x.contiguous()
            fns["fwht"](x.shape[0], self.p, self.m, x.data_ptr(), 1.0 / math.sqrt(self.p))
            return x
        if self.h is None or self.h.dtype != x.dtype or self.h.device != x.device:
            self.h = hadamard(self.p).to(x)
        t, p, m = x.shape  # one (p, p) @ (p, T m) product, not T small ones re-reading H_p
        return (self.h @ x.transpose(0, 1).reshape(p, t * m)).reshape(p, t, m).transpose(0, 1)

    def forward(self, x: Tensor, transpose: bool = False, pre: Tensor | None = None) -> Tensor:
        """``T x`` of each row of ``x`` ``(t, n)``, or ``T^T (pre * x)`` with ``transpose``."""
        t = x.shape[0]
        fns = _native(x)
        if fns is not None and self.m <= HROT_MAX_M:  # one C call
            x = x.contiguous()
            y = torch.empty_like(x)
            fns["hrot"](t, self.p, self.m, self.signs.data_ptr(), self.q.data_ptr(),
                        None if pre is None else pre.data_ptr(), x.data_ptr(), y.data_ptr(),
                        int(transpose), 1.0 / math.sqrt(self.p))
            return y
        if pre is not None:
            x = x * pre
        if not transpose:  # T x = vec(H X Q^T), X = view(s * x)
            y = self._hadamard((x * self.signs).view(t, self.p, self.m))
            return (y @ self.q.T).reshape(t, self.n) if self.m > 1 else y.reshape(t, self.n)
        y = x.reshape(t, self.p, self.m)  # T^T y = s * vec(H Y Q)
        y = y @ self.q if self.m > 1 else y.clone()
        return self._hadamard(y).reshape(t, self.n) * self.signs


class _Float32Linear(nn.Module):
    """A linear layer computed in float32 on ``(T, in)`` rows (:meth:`forward_float`): any input
    shape and dtype is flattened, computed and given back in the input's dtype."""

    in_features: int
    out_features: int

    def forward_float(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        y = self.forward_float(x.reshape(-1, self.in_features).float())
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


@functools.cache
def _e8p_tables() -> tuple[Tensor, Tensor]:
    """The tables the ``e8p_matvec`` kernel decodes a code ``c = abs * 256 + low`` with (``low
    = neg7 * 2 + shift``): ``point = (patp[abs] ^ lo[low, :8]) + lo[low, 8:]`` (``^`` on the
    float bits).

    * ``patp`` ``(256, 8)`` float32: E8P's absolute patterns, lane 7 negated where the pattern's
      parity bit (``(sum_i 2 a_i mod 4) / 2``) is set;
    * ``lo`` ``(256, 16)`` float32: the float sign bit of lane ``i < 7`` where bit ``i`` of
      ``neg7`` is set, of lane 7 where ``neg7`` has an odd number of bits (with ``patp``'s lane
      7, E8P's parity rule for the last sign), then 8 times ``+1/4`` (``shift = 0``) or ``-1/4``.
    """
    a = e8p.abs_patterns().float()
    parity = torch.remainder(torch.round(2 * a).to(torch.int64).sum(1), 4) // 2
    patp = a.clone()
    patp[parity.bool(), 7] *= -1
    low = torch.arange(256)
    bits = ((low[:, None] >> 1) >> torch.arange(7)) & 1
    lanes = torch.cat([bits, bits.sum(1, keepdim=True) & 1], 1)
    signs = (lanes * -(2**31)).to(torch.int32).view(torch.float32)  # -2^31: the sign bit alone
    shift = (0.25 - 0.5 * (low & 1).float())[:, None].expand(256, 8)
    return patp.contiguous(), torch.cat([signs, shift], 1).contiguous()


class GLVQLinear(_Float32Linear):
    """A linear layer over packed GLVQ codes (see the module docstring).

    Build it with :meth:`from_codes` (stored codes and side information, as in an export) or
    :meth:`from_result` (a :class:`llvq.llm.groups.LayerResult`). Its output equals
    ``F.linear(x, W, bias)`` with ``W`` the dequantized weight, up to float32 rounding.

    Memory: the codes at their bit widths, ``M`` transforms ``s_g G_g^T`` (float32, ``d x d``),
    float32 row scales, the float32 columns of companding groups, and the rotation factors.
    """

    def __init__(self, in_features: int, out_features: int, group_size: int, lattice_dim: int,
                 bits: list[int], data: Tensor, offsets: Tensor, strides: Tensor,
                 transforms: Tensor,
                 row_scale: Tensor | None, dense_groups: list[int], dense_weight: Tensor,
                 rotation_seed: int | None = None, bias: Tensor | None = None,
                 code: str = "box") -> None:
        super().__init__()
        self.code = code
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.lattice_dim = group_size, lattice_dim
        self.groups = in_features // group_size
        self.bits = list(bits)
        self.dense_groups = list(dense_groups)
        self.rotation_seed = rotation_seed
        skip = torch.zeros(self.groups, dtype=torch.int32)
        skip[self.dense_groups] = 1
        self.register_buffer("data", data)
        self.register_buffer("offsets", offsets.to(torch.int64))
        self.register_buffer("strides", strides.to(torch.int64))
        self.register_buffer("bits_i32", torch.tensor(self.bits, dtype=torch.int32))
        self.register_buffer("skip", skip)
        offset = torch.tensor([2.0 ** (b - 1) - 0.5 if code == "box" else 0.0 for b in self.bits])
        self.register_buffer("code_offset", offset.masked_fill(skip.bool(), 0.0))
        self.register_buffer("transforms", transforms.float().contiguous())  # (M, d, d): s_g G_g^T
        self.register_buffer("row_scale", None if row_scale is None else row_scale.float())
        cols = torch.cat([torch.arange(g * group_size, (g + 1) * group_size)
                          for g in self.dense_groups]) if self.dense_groups else torch.zeros(0, dtype=torch.int64)
        self.register_buffer("dense_cols", cols)
        self.register_buffer("dense_weight", dense_weight.float())  # (out, len(cols)), ρ included
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        if rotation_seed is not None:
            self.rot_out = _Rotation(out_features, int(rotation_seed))
            self.rot_in = _Rotation(in_features, int(rotation_seed) + 1)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_codes(cls, codes: Tensor, generator: Tensor, mu: Tensor, scale: Tensor,
                   row_scale: Tensor | None, bits: Tensor, compand: Tensor, out_features: int,
                   group_size: int, rotation_seed: int | None = None,
                   bias: Tensor | None = None, code: str = "box") -> GLVQLinear:
        """From stored codes ``(M, out * gs / d, d)`` and side information (as :func:`dequantize`
        takes them: ``mu`` has a value for every group, read where ``compand``; ``code`` as
        ``model.glvq.code``)."""
        m, _, d = codes.shape
        in_features = m * group_size
        bits_l = [int(b) for b in torch.as_tensor(bits).flatten().tolist()]
        mask = torch.as_tensor(compand, dtype=torch.bool).flatten()
        g, mu_eff = round_side(generator.float(), held_mu(mu))
        s = scale.float().flatten()
        grouped = codes.reshape(m, out_features, group_size)
        dense = [i for i in range(m) if bool(mask[i])]
        if dense:  # µ-law groups: decoded once, exactly as the dequantizer does
            q = GroupedLatticeQuantizer(d, groups=len(dense), learnable=False, code=code)
            st = GLVQState(generator=g[dense], mu=mu_eff[dense], scale=s[dense],
                           bits=torch.tensor([bits_l[i] for i in dense]),
                           compand=torch.ones(len(dense), dtype=torch.bool))
            with torch.no_grad():
                x_hat = q.decode(codes[dense].to(torch.int64), st)  # (D, vecs, d)
            w = x_hat.reshape(len(dense), out_features, group_size).transpose(0, 1)
            w = w.reshape(out_features, len(dense) * group_size)
            dense_weight = w * row_scale.float()[:, None] if row_scale is not None else w
        else:
            dense_weight = torch.zeros(out_features, 0)
        keep = grouped.clone()
        keep[dense] = 0  # their codes stay in the stream (unused) so offsets stay simple
        data, offsets, strides = pack_rows(keep, bits_l)
        transforms = g.transpose(1, 2) * s.view(-1, 1, 1)
        return cls(in_features, out_features, group_size, d, bits_l, data, offsets, strides,
                   transforms,
                   row_scale, dense, dense_weight, rotation_seed, bias, code)

    @classmethod
    def from_result(cls, res: LayerResult, group_size: int,
                    bias: Tensor | None = None) -> GLVQLinear:
        """From a quantized layer's :class:`LayerResult`."""
        out = res.weight.shape[0]
        return cls.from_codes(res.codes, res.generator, res.mu, res.scale, res.row_scale,
                              res.bits, res.compand, out, group_size, res.rotation_seed, bias,
                              res.code)

    # -- compute --------------------------------------------------------------------------------
    def _z(self, x: Tensor) -> Tensor:
        """``z_{gj} = s_g G_g x_{gj}`` for every vector, ``(T, in)``."""
        t, d = x.shape[0], self.lattice_dim
        fns = _native(x)
        if fns is not None:
            x = x.contiguous()
            z = torch.empty_like(x)
            fns["group_transform"](t, self.groups, self.group_size // d, d,
                                   self.transforms.data_ptr(), x.data_ptr(), z.data_ptr())
            return z
        v = x.view(t, self.groups, self.group_size // d, d)
        return torch.matmul(v, self.transforms.unsqueeze(0)).reshape(t, self.in_features)

    def _codes_product(self, z: Tensor) -> Tensor:
        """``sum_g (c - o_g) . z`` per row and token (companding groups excluded), ``(T, out)``."""
        fns = _native(z)
        t = z.shape[0]
        if fns is None or t > MAX_TOKENS:  # one unpack + matmul
            return F.linear(z, self.code_matrix())
        z = z.contiguous()
        y = torch.empty(t, self.out_features)
        if self.code == "e8p":  # digits -> the code's pattern, signs and shift
            patp, lo = _e8p_tables()

            def run_e8p(r0: int, r1: int) -> None:
                fns["e8p_matvec"](r0, r1, t, self.groups, self.group_size,
                                  self.offsets.data_ptr(), self.skip.data_ptr(),
                                  self.strides.data_ptr(), self.data.data_ptr(),
                                  patp.data_ptr(), lo.data_ptr(), z.data_ptr(), y.data_ptr(),
                                  self.out_features)

            _split_rows(run_e8p, self.out_features)
            return y
        const = (z.view(t, self.groups, self.group_size).sum(2) * self.code_offset).sum(1)

        def run(r0: int, r1: int) -> None:
            fns["code_matvec"](r0, r1, t, self.groups, self.group_size, self.bits_i32.data_ptr(),
                               self.offsets.data_ptr(), self.skip.data_ptr(),
                               self.strides.data_ptr(), self.data.data_ptr(), z.data_ptr(),
                               y.data_ptr(),
                               self.out_features)

        _split_rows(run, self.out_features)
        return y - const[:, None]

    def code_matrix(self) -> Tensor:
        """``c - o_g`` (E8P: the points ``P[c]``) as a float32 ``(out, in)`` matrix (zero on
        companding groups)."""
        fns = kernels() if self.data.device.type == "cpu" else None
        if fns is None:
            codes = unpack_rows(self.data, self.offsets, self.bits, self.out_features,
                                self.group_size).float() - self.code_offset.view(-1, 1, 1)
            codes[self.dense_groups] = 0
            mat = codes.transpose(0, 1).reshape(self.out_features, self.in_features)
        else:
            mat = torch.zeros(self.out_features, self.in_features)
            fns["code_unpack"](0, self.out_features, self.groups, self.group_size,
                               self.bits_i32.data_ptr(), self.offsets.data_ptr(),
                               self.skip.data_ptr(), self.strides.data_ptr(),
                               self.code_offset.data_ptr(), self.data.data_ptr(), mat.data_ptr())
        if self.code == "e8p":  # base-4 digits -> E8P points (companding groups stay zero)
            d = self.lattice_dim
            points = e8p.decode(e8p.from_digits(mat.view(self.out_features, -1, d)))
            mat = points.reshape(self.out_features, self.in_features)
            if self.dense_groups:
                mat[:, self.dense_cols] = 0
        return mat

    def dequantized_weight(self) -> Tensor:
        """The full float32 weight ``(out, in)`` in the layer's own coordinates (for checks)."""
        y = self.forward_float(torch.eye(self.in_features))
        return (y if self.bias is None else y - self.bias).T.contiguous()

    def forward_float(self, x: Tensor) -> Tensor:
        """:meth:`forward` on a float32 ``(T, in)`` input."""
        if self.rotation_seed is not None:
            x = self.rot_in(x)
        y = self._codes_product(self._z(x))
        scale = self.row_scale  # applied by the output rotation where there is one
        if self.dense_groups:
            if scale is not None:
                y = y * scale
            y, scale = y + F.linear(x[:, self.dense_cols], self.dense_weight), None
        if self.rotation_seed is not None:
            y = self.rot_out(y, transpose=True, pre=scale)
        elif scale is not None:
            y = y * scale
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        widths = sorted(set(self.bits))
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, d={self.lattice_dim}, bits={widths}, code={self.code}, "
                f"dense_groups={len(self.dense_groups)}, "
                f"incoherence={self.rotation_seed is not None}, bias={self.bias is not None}")


# -- int8 embedding table and output head ---------------------------------------------------------
def int8_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: ``(q, s)`` with ``q = round(w / s)`` in ``[-127, 127]`` and
    ``s = max_j |w_rj| / 127`` (float32; 1 for an all-zero row). ``q * s[:, None]`` is the
    weight to within half a step per entry; 8 bits per entry plus 32 per row."""
    if weight.ndim != 2:
        raise ValueError(f"int8_rows: expected a 2-D weight, got shape {tuple(weight.shape)}")
    scale = torch.empty(weight.shape[0])
    q = torch.empty(weight.shape, dtype=torch.int8)
    for r0 in range(0, weight.shape[0], 4096):  # in chunks: no full float32 copy
        w = weight[r0:r0 + 4096].float()
        if not bool(torch.isfinite(w).all()):
            raise ValueError("int8_rows: the weight holds NaN or inf")
        s = w.abs().amax(1) / 127
        s = torch.where(s > 0, s, torch.ones_like(s))
        q[r0:r0 + 4096] = torch.round(w / s[:, None]).clamp_(-127, 127).to(torch.int8)
        scale[r0:r0 + 4096] = s
    return q, scale


class Int8Embedding(nn.Module):
    """An embedding table kept as int8 rows with one float32 scale each (:func:`int8_rows`);
    a lookup returns ``q[ids] * s[ids]`` in float32. It may share ``q`` and ``s`` with the
    output head (:class:`Int8Linear`) when the model ties them."""

    def __init__(self, q: Tensor, scale: Tensor, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = q.shape
        self.padding_idx = padding_idx
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)

    def forward(self, ids: Tensor) -> Tensor:
        return self.q[ids].float() * self.scale[ids].unsqueeze(-1)

    def dequantized_weight(self) -> Tensor:
        return self.q.float() * self.scale[:, None]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"


class _TableHead(_Float32Linear):
    """An output head whose weight rows are stored quantized: up to ``MAX_TOKENS`` vectors go
    through the format's C kernel (:meth:`_matvec`), more through float32 blocks of 4,096 rows
    (:meth:`_rows`; without a compiler, always)."""

    def _init_bias(self, bias: Tensor | None) -> None:
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(),
                                                           requires_grad=False)

    def _rows(self, r0: int, r1: int) -> Tensor:
        """Rows ``r0:r1`` of the weight in float32."""
        raise NotImplementedError

    def _matvec(self, fns: dict, x: Tensor, y: Tensor):
        """``run(r0, r1)`` writing rows ``r0:r1`` of ``y = x W^T`` with the C kernel."""
        raise NotImplementedError

    def forward_float(self, x: Tensor) -> Tensor:
        """:meth:`forward` on a float32 ``(T, in)`` input."""
        fns, t = _native(x), x.shape[0]
        if fns is not None and t <= MAX_TOKENS:
            x = x.contiguous()
            y = torch.empty(t, self.out_features)
            _split_rows(self._matvec(fns, x, y), self.out_features)
        else:
            y = torch.cat([F.linear(x, self._rows(r0, min(r0 + 4096, self.out_features)))
                           for r0 in range(0, self.out_features, 4096)], dim=1)
        return y if self.bias is None else y + self.bias

    def dequantized_weight(self) -> Tensor:
        return self._rows(0, self.out_features)


class Int8Linear(_TableHead):
    """``y = x W^T (+ b)`` with ``W`` kept as int8 rows and one float32 scale per row: the output
    head of a model whose (tied) embedding table is stored in int8. Up to ``MAX_TOKENS``
    vectors go through a C kernel that reads the int8 rows directly; more are multiplied by
    float32 blocks of 4096 rows (torch path without a compiler: blocks always)."""

    def __init__(self, q: Tensor, scale: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        self._init_bias(bias)

    def _rows(self, r0: int, r1: int) -> Tensor:
        return self.q[r0:r1].float() * self.scale[r0:r1, None]

    def _matvec(self, fns: dict, x: Tensor, y: Tensor):
        t = x.shape[0]

        def run(r0: int, r1: int) -> None:
            fns["int8_matvec"](r0, r1, t, self.in_features, self.q.data_ptr(),
                               self.scale.data_ptr(), x.data_ptr(), y.data_ptr(),
                               self.out_features)

        return run

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8 rows, "
                f"bias={self.bias is not None}")


# -- int4 embedding table and output head ---------------------------------------------------------
INT4_BLOCK = 32  # entries of a row per float16 scale and minimum


def int4_blocks(weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric 4-bit codes in blocks of 32 entries of a row (GGUF's Q4_1 layout of the side
    information): ``(q, scale, low)`` with ``q`` uint8 ``(rows, cols / 2)`` (byte ``j`` of a
    block's 16 holds code ``j`` in its low nibble, code ``j + 16`` in its high one) and float16
    ``scale``, ``low`` ``(rows, cols / 32)``; entry ``i`` of block ``b`` decodes to
    ``low[b] + scale[b] * code_i`` with ``scale = (max - min) / 15`` (1 for a constant block)
    and ``low`` the block's minimum, both rounded to float16 before the codes are chosen.
    4 bits per entry plus 32 per block: 5 bits per entry."""
    if weight.ndim != 2:
        raise ValueError(f"int4_blocks: expected a 2-D weight, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if cols % INT4_BLOCK:
        raise ValueError(f"int4_blocks: the width {cols} is not a multiple of the block of "
                         f"{INT4_BLOCK} entries (use embeddings='int8')")
    nb = cols // INT4_BLOCK
    q = torch.empty(rows, cols // 2, dtype=torch.uint8)
    scale = torch.empty(rows, nb, dtype=torch.float16)
    low = torch.empty(rows, nb, dtype=torch.float16)
    for r0 in range(0, rows, 4096):  # in chunks: no full float32 copy
        w = weight[r0:r0 + 4096].float().reshape(-1, nb, INT4_BLOCK)
        if not bool(torch.isfinite(w).all()):
            raise ValueError("int4_blocks: the weight holds NaN or inf")
        lo = w.amin(2).half()
        s = ((w.amax(2) - lo.float()) / 15).half()
        s = torch.where(s > 0, s, torch.ones_like(s))
        c = torch.round((w - lo.float()[..., None]) / s.float()[..., None]).clamp_(0, 15)
        c = c.to(torch.uint8)
        q[r0:r0 + 4096] = (c[..., :16] | (c[..., 16:] << 4)).reshape(-1, cols // 2)
        scale[r0:r0 + 4096], low[r0:r0 + 4096] = s, lo
    return q, scale, low


def int4_dequantize(q: Tensor, scale: Tensor, low: Tensor) -> Tensor:
    """The float32 rows of :func:`int4_blocks`' codes ``q`` (any leading shape)."""
    blocks = q.reshape(*q.shape[:-1], -1, INT4_BLOCK // 2)
    codes = torch.cat([blocks & 15, blocks >> 4], dim=-1).float()
    w = codes * scale.float().unsqueeze(-1) + low.float().unsqueeze(-1)
    return w.reshape(*q.shape[:-1], -1)


class Int4Embedding(nn.Module):
    """An embedding table kept as 4-bit codes in blocks of 32 (:func:`int4_blocks`); a lookup
    decodes the rows asked for to float32. It may share its tensors with the output head
    (:class:`Int4Linear`) when the model ties them."""

    def __init__(self, q: Tensor, scale: Tensor, low: Tensor, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = q.shape[0], 2 * q.shape[1]
        self.padding_idx = padding_idx
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        self.register_buffer("low", low)

    def forward(self, ids: Tensor) -> Tensor:
        return int4_dequantize(self.q[ids], self.scale[ids], self.low[ids])

    def dequantized_weight(self) -> Tensor:
        return int4_dequantize(self.q, self.scale, self.low)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int4 blocks of {INT4_BLOCK}"


class Int4Linear(_TableHead):
    """``y = x W^T (+ b)`` with ``W`` kept as :func:`int4_blocks` codes: the output head of a
    model whose (tied) embedding table is stored in 4 bits. Up to ``MAX_TOKENS`` vectors go
    through a C kernel that reads the codes directly; more are multiplied by float32 blocks of
    4096 rows (torch path without a compiler: blocks always)."""

    def __init__(self, q: Tensor, scale: Tensor, low: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape[0], 2 * q.shape[1]
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        self.register_buffer("low", low)
        self._init_bias(bias)

    def _rows(self, r0: int, r1: int) -> Tensor:
        return int4_dequantize(self.q[r0:r1], self.scale[r0:r1], self.low[r0:r1])

    def _matvec(self, fns: dict, x: Tensor, y: Tensor):
        t = x.shape[0]
        xsum = x.reshape(t, -1, INT4_BLOCK).sum(-1).contiguous()

        def run(r0: int, r1: int) -> None:
            fns["int4_matvec"](r0, r1, t, self.in_features, self.q.data_ptr(),
                               self.scale.data_ptr(), self.low.data_ptr(), x.data_ptr(),
                               xsum.data_ptr(), y.data_ptr(), self.out_features)

        return run

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int4 blocks "
                f"of {INT4_BLOCK}, bias={self.bias is not None}")

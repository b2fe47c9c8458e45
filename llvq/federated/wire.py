"""A :class:`~llvq.federated.payload.Payload` as bytes: fixed-length indices packed as one bit stream.

The bytes are what a real transport (Flower, :mod:`llvq.federated.flower`) carries, so their
length is the rate: ``ceil(payload.bits / 8)`` plus a small header. Layout (little-endian):

    header   magic ``b"LQ"``, version (u8), kind (u8 length + utf-8), numel P (u32),
             index width b (u8), blocks m (u32), side entries (u8)
    side     per entry: key (u8 length + utf-8), ndim (u8), dims (u32 each), fp32 values
    indices  the ``m`` indices, ``b`` bits each, least significant bit first, packed into
             ``ceil(m b / 8)`` bytes

The index width is ``(bits - 32 * side values) / m``, the compressor's fixed ``R L``, so a
payload's ``bits`` are exactly the bits of side and index sections. Statistics
(``overloaded``, ``stats``) are diagnostics and not part of the stream; a transport that wants
them sends them beside it. :func:`unpack_payload` raises :class:`PayloadError` on any malformed
stream (truncated, trailing bytes, unknown version); the server's decompressor then checks the
index range, shapes and side information as for any payload.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import torch

from llvq.federated.payload import FLOAT_BITS, Payload, PayloadError

__all__ = ["HEADER_MAGIC", "index_width", "pack_payload", "unpack_payload"]

HEADER_MAGIC = b"LQ"
_VERSION = 1


def index_width(p: Payload) -> int:
    """Bits per index of ``p``: its index bits (``bits`` less the fp32 side information) per block.

    Raises:
        PayloadError: ``bits`` does not split into whole, equal widths of at most 63 bits (a
            compressor whose ``bits`` do not count its side information as fp32).
    """
    m = int(p.indices.numel())
    side = FLOAT_BITS * sum(int(t.numel()) for t in p.side.values())
    if m == 0:
        return 0
    idx_bits = int(p.bits) - side
    if idx_bits <= 0 or idx_bits % m or idx_bits // m > 63:
        raise PayloadError(f"payload of '{p.kind}' counts {p.bits} bits, which is not {m} "
                           f"fixed-length indices plus {side} bits of fp32 side information")
    return idx_bits // m


def _pack_bits(idx: np.ndarray, width: int) -> bytes:
    shifts = np.arange(width, dtype=np.uint64)
    bits = ((idx.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)  # (m, b)
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def _unpack_bits(raw: bytes, m: int, width: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")[: m * width]
    weights = np.uint64(1) << np.arange(width, dtype=np.uint64)
    return (bits.reshape(m, width).astype(np.uint64) * weights).sum(axis=1).astype(np.int64)


def _name(s: str) -> bytes:
    b = s.encode()
    if len(b) > 255:
        raise ValueError(f"name '{s[:40]}...' is longer than 255 bytes")
    return struct.pack("<B", len(b)) + b


def pack_payload(p: Payload) -> bytes:
    """The bytes of ``p``: header, fp32 side information, then the bit-packed indices."""
    width = index_width(p)
    m = int(p.indices.numel())
    out = [HEADER_MAGIC, struct.pack("<B", _VERSION), _name(p.kind),
           struct.pack("<IBIB", int(p.numel), width, m, len(p.side))]
    for key, t in p.side.items():
        arr = t.detach().cpu().float().numpy()
        out += [_name(key), struct.pack("<B", arr.ndim), struct.pack(f"<{arr.ndim}I", *arr.shape),
                arr.astype("<f4").tobytes()]
    if m:
        idx = p.indices.detach().cpu().reshape(-1).numpy()
        if idx.min() < 0 or int(idx.max()) >> width:
            raise PayloadError(f"an index of '{p.kind}' does not fit in {width} bits")
        out.append(_pack_bits(idx, width))
    return b"".join(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = memoryview(data), 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise PayloadError(f"payload stream truncated: needs {n} bytes at offset {self.pos} "
                               f"of {len(self.data)}")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def name(self) -> str:
        try:
            return self.take(self.unpack("<B")[0]).decode()
        except UnicodeDecodeError as e:
            raise PayloadError("payload stream has a name that is not utf-8") from e


def unpack_payload(data: bytes) -> Payload:
    """The :class:`Payload` of a stream written by :func:`pack_payload` (``stats`` empty,
    ``overloaded`` 0: they do not travel in the stream).

    Raises:
        PayloadError: not a payload stream, an unknown version, truncated or trailing bytes.
    """
    r = _Reader(data)
    if r.take(2) != HEADER_MAGIC:
        raise PayloadError("not an llvq payload stream (bad magic)")
    (version,) = r.unpack("<B")
    if version != _VERSION:
        raise PayloadError(f"payload stream version {version}, this llvq reads {_VERSION}")
    kind = r.name()
    numel, width, m, n_side = r.unpack("<IBIB")
    if width > 63:
        raise PayloadError(f"payload stream claims {width}-bit indices (at most 63)")
    side: dict[str, torch.Tensor] = {}
    side_values = 0
    for _ in range(n_side):
        key = r.name()
        (ndim,) = r.unpack("<B")
        shape = r.unpack(f"<{ndim}I")
        n = math.prod(shape)
        side[key] = torch.from_numpy(np.frombuffer(r.take(4 * n), dtype="<f4").copy()).view(shape)
        side_values += n
    idx = _unpack_bits(r.take(math.ceil(m * width / 8)), m, width) if m else np.zeros(0, np.int64)
    if r.pos != len(r.data):
        raise PayloadError(f"payload stream has {len(r.data) - r.pos} trailing bytes")
    return Payload(kind, int(numel), torch.from_numpy(idx), side,
                   bits=width * m + FLOAT_BITS * side_values, blocks=m if m else int(numel))

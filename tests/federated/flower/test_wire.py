"""Payload bit streams: exact round trip, length = the counted bits + a small header, bad streams refused."""

from __future__ import annotations

import math

import pytest
import torch

from llvq.federated import PayloadError, build_compressor
from llvq.federated.wire import pack_payload, unpack_payload

CASES = [("none", {}), ("uniform", {}), ("qsgd", {}), ("lattice", {}), ("lattice", {"lattice": "E8"}),
         ("olala", {"steps": 4})]


@pytest.mark.parametrize(("name", "options"), CASES)
def test_stream_round_trips_and_is_the_counted_rate(name: str, options: dict) -> None:
    comp = build_compressor(name, 2.0, **options)
    h = torch.randn(1001, generator=torch.Generator().manual_seed(0))
    p = comp.compress(h, seed=5)
    data = pack_payload(p)
    q = unpack_payload(data)
    assert torch.equal(q.indices, p.indices) and q.bits == p.bits and q.numel == p.numel
    assert torch.equal(comp.decompress(q, 5, h.numel()), comp.decompress(p, 5, h.numel()))
    header = len(data) - math.ceil(p.bits / 8)
    assert 0 < header <= 48, f"{header} bytes of framing"


def test_malformed_streams_are_refused() -> None:
    p = build_compressor("lattice", 2.0).compress(torch.randn(300), seed=1)
    data = pack_payload(p)
    for bad in (data[:-1], data + b"\x00", b"XX" + data[2:], data[:2] + b"\x09" + data[3:], b""):
        with pytest.raises(PayloadError):
            unpack_payload(bad)


def test_index_width_must_hold_every_index() -> None:
    p = build_compressor("lattice", 2.0).compress(torch.randn(300), seed=1)
    p.indices[0] = 1 << 20  # does not fit the compressor's R L = 4 bits
    with pytest.raises(PayloadError, match="does not fit"):
        pack_payload(p)

"""The bounded (finite-code) dithered lattice quantizer behind the federated compressors."""

from __future__ import annotations

import math

import pytest
import torch

from llvq.quantizers import build


def _data(n: int = 4000, dim: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("target", [0.0, 0.01, 0.1])
def test_fit_scale_meets_the_overload_target(target: float) -> None:
    q = build("bounded_lattice", dim=2, lattice="A2", rate=2.0).eval()
    x = _data()
    zeta = q.fit_scale(x, target)
    over = q.encode_blocks(x)[1].double().mean()
    assert float(over) <= target
    q.scale.fill_(zeta * 0.97)  # a little smaller overloads more than the target
    assert float(q.encode_blocks(x)[1].double().mean()) > target or target == 0.0


def test_overloaded_blocks_take_the_nearest_codeword() -> None:
    q = build("bounded_lattice", dim=2, lattice="A2", rate=1.0, dither="none").eval()
    x = _data(500) * 3.0
    codes, over = q.encode_blocks(x)
    assert bool(over.any()) and bool((~over).any())
    coords, centre = q.code()
    words = coords.double() @ q.generator
    nearest = torch.cdist(x + centre, words).argmin(1)
    assert torch.equal(codes.view(-1), nearest)


def test_subtractive_dither_error_is_uniform_on_the_cell() -> None:
    q = build("bounded_lattice", dim=4, lattice="D4", rate=3.0).eval()
    x = _data(20_000, 4, seed=1) * 0.2
    q.fit_scale(x, 0.0)
    err = q.decode(q.encode(x)).double() - x
    nsm = 0.076603  # D4
    vol = abs(float(torch.linalg.det(q.generator))) ** (2 / 4)
    assert float(err.var()) == pytest.approx(nsm * float(q.scale) ** 2 * vol, rel=0.05)
    assert abs(float(err.mean())) < 5 * math.sqrt(float(err.var()) / err.numel())


def test_state_dict_round_trip_keeps_codes() -> None:
    q = build("bounded_lattice", dim=4, lattice="A2", rate=2.0, seed=3).eval()
    q.set_generator(torch.tensor([[1.2, 0.1], [0.3, 0.9]], dtype=torch.float64))
    q.fit_scale(_data(300, 4), 0.05)
    r = build("bounded_lattice", dim=4, lattice="A2", rate=2.0, seed=3).eval()
    r.load_state_dict(q.state_dict())
    x = _data(300, 4, seed=2)
    assert torch.equal(q.encode(x.float()), r.encode(x.float()))
    assert torch.equal(q.decode(q.encode(x.float())), r.decode(r.encode(x.float())))


@pytest.mark.parametrize("kwargs, match", [
    ({"rate": 1.25}, "rate"),
    ({"rate": 30.0, "lattice": "Z1"}, "rate"),
    ({"dither": "pink"}, "dither"),
    ({"dim": 3}, "dim=3"),
    ({"scale": 0.0}, "scale"),
])
def test_bad_settings_are_clear(kwargs: dict, match: str) -> None:
    args = {"dim": 4, "lattice": "A2", **kwargs}
    with pytest.raises(ValueError, match=match):
        build("bounded_lattice", **args)


def test_codes_out_of_range_are_refused() -> None:
    q = build("bounded_lattice", dim=2, rate=1.0)
    with pytest.raises(ValueError, match="outside"):
        q.decode(torch.tensor([[4]]))


def test_per_call_generator_scale_and_seed_leave_the_quantizer_unchanged() -> None:
    """``encode``/``decode`` take a generator, a scale and a seed per call, equal to a quantizer
    built with them, and never change the quantizer's own state."""
    g = torch.tensor([[1.2, 0.1], [0.3, 0.9]], dtype=torch.float64)
    x = _data(400, 4, seed=5).float()
    q = build("bounded_lattice", dim=4, lattice="A2", rate=2.0, seed=3).eval()
    state = {k: v.clone() for k, v in q.state_dict().items()}
    ref = build("bounded_lattice", dim=4, lattice="A2", rate=2.0, seed=9).eval()
    ref.set_generator(g)
    ref.scale.fill_(0.7)
    codes = q.encode(x, generator=g, scale=0.7, seed=9)
    assert torch.equal(codes, ref.encode(x))
    assert torch.equal(q.decode(codes, generator=g, scale=0.7, seed=9), ref.decode(codes))
    zeta = q.search_scale(x, 0.05, generator=g, seed=9)
    assert zeta == ref.fit_scale(x, 0.05)
    assert all(torch.equal(state[k], v) for k, v in q.state_dict().items()) and q.seed == 3
    assert torch.equal(q.encode(x), build("bounded_lattice", dim=4, lattice="A2", rate=2.0,
                                          seed=3).eval().encode(x))
    with pytest.raises(ValueError, match=r"generator must be \(2, 2\)"):
        q.encode(x, generator=torch.eye(3, dtype=torch.float64))


def test_block_and_rate_are_contract_fields() -> None:
    q = build("bounded_lattice", dim=8, lattice="D4", rate=1.5)
    assert (q.block, q.blocks, q.codebook_size) == (4, 2, 2 ** 6)
    assert q.bits_per_vector == 1.5 * 8

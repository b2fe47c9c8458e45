"""The glvq quantizer: per-call state instead of mutation, and its contract fields."""

from __future__ import annotations

import torch

from llvq.quantizers import build
from llvq.quantizers.glvq import GLVQState, GroupedLatticeQuantizer


def _z(groups: int, d: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(groups, 50, d, generator=torch.Generator().manual_seed(seed))


def test_own_state_equals_no_state() -> None:
    q = GroupedLatticeQuantizer(4, groups=3, bits=[2, 3, 2], scale=2.0).eval()
    z = _z(3)
    codes = q.encode(z)
    assert torch.equal(codes, q.encode(z, q.state()))
    assert torch.equal(q.decode(codes), q.decode(codes, q.state()))
    assert torch.equal(q(z).z_q, q.quantize(z, q.state()).z_q)


def test_state_per_call_does_not_mutate_the_module() -> None:
    q = GroupedLatticeQuantizer(4, groups=2, bits=2, compand=False)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    st = GLVQState(generator=torch.eye(4).expand(2, 4, 4) * 0.5, mu=torch.full((2,), 20.0),
                   scale=torch.tensor([1.0, 3.0]), bits=torch.tensor([3, 1]),
                   compand=torch.tensor([True, False]))
    z = _z(2)
    codes = q.encode(z, st)
    assert int(codes[0].max()) <= 7 and int(codes[1].max()) <= 1  # the call's widths
    assert not torch.equal(q.decode(codes, st), q.decode(codes))
    ref = GroupedLatticeQuantizer(4, groups=2, bits=[3, 1], compand=[True, False], mu=20.0,
                                  scale=[1.0, 3.0])
    with torch.no_grad():
        ref.generator.copy_(st.generator)
    assert torch.equal(codes, ref.encode(z))
    assert torch.allclose(q.decode(codes, st), ref.decode(codes))
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not hasattr(q, "set_state")


def test_contract_fields() -> None:
    q = build("glvq", dim=8, bits=3)
    assert q.codebook_size == 8 and q.bits_per_vector == 24.0
    mixed = GroupedLatticeQuantizer(8, groups=4, bits=[2, 3, 3, 2])
    assert mixed.codebook_size is None and mixed.bits_per_vector == 2.5 * 8


def test_flat_inputs_keep_their_shape() -> None:
    q = build("glvq", dim=16).eval()
    for shape in [(16,), (5, 16), (0, 16)]:
        z = torch.randn(shape)
        out = q(z)
        assert out.z_q.shape == z.shape and out.codes.shape == z.shape
        assert torch.allclose(q.decode(q.encode(z)), out.z_q, atol=1e-6)

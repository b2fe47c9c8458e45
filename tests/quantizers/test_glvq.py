"""The glvq quantizer: per-call state instead of mutation, and its contract fields."""

from __future__ import annotations

import pytest
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


def test_e8p_code_passes_the_contract_and_codes_the_e8p_ball() -> None:
    from llvq.lattices import e8p
    from llvq.testing import check_quantizer

    q = GroupedLatticeQuantizer(8, code="e8p", compand=False, scale=1.0)
    check_quantizer(q, straight_through="exact")
    check_quantizer(q, straight_through="exact", empty_batch=True)
    assert q.codebook_size == 4 and q.bits_per_vector == 16.0  # 2 bits per coordinate
    z = torch.randn(3, 40, 8, generator=torch.Generator().manual_seed(0))
    codes = q.encode(z)
    assert int(codes.min()) >= 0 and int(codes.max()) <= 3
    # the 8 digits are the nearest E8P point's index under G
    g = q.generator.detach()[0]
    idx, pts = e8p.nearest((z @ torch.linalg.inv(g)).reshape(-1, 8))
    assert torch.equal(e8p.from_digits(codes.reshape(-1, 8)), idx)
    torch.testing.assert_close(q.decode(codes).reshape(-1, 8), pts @ g)


def test_e8p_ball_codes_gaussians_better_than_the_box() -> None:
    z = torch.randn(1, 20000, 8, generator=torch.Generator().manual_seed(1))
    mse = {}
    for code in ("box", "e8p"):
        q = GroupedLatticeQuantizer(8, bits=2, compand=False, learnable=False, code=code)
        with torch.no_grad():
            q.generator.copy_(torch.eye(8) * q.steps(q.bits).view(1, 1, 1))
        mse[code] = float((q(z).z_q - z).pow(2).mean())
    assert mse["box"] > 0.115 and mse["e8p"] < 0.095  # Lloyd-Max 0.1175; E8P 0.0913


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"dim": 16, "code": "e8p"}, "code='e8p' codes 8-dimensional"),
    ({"dim": 8, "bits": 3, "code": "e8p"}, "code='e8p' codes 8-dimensional vectors at 2 bits"),
    ({"dim": 8, "code": "d8"}, "`code` must be one of box, e8p"),
])
def test_e8p_code_errors_name_the_setting(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GroupedLatticeQuantizer(**kwargs)

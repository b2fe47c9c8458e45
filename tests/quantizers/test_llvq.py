"""LL-VQ-VAE quantizer: a hand-computed case, the init range and the guards."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from llvq.quantizers import build
from llvq.quantizers.llvq import basis_init_range


def test_hand_computed_case() -> None:
    # B = diag(0.5, 2.0): z = (0.7, -3.1) -> v = round(1.4, -1.55) = (1, -2) -> Bv = (0.5, -4.0)
    q = build("llvq", dim=2, init_basis=[0.5, 2.0], beta=0.25, gamma=1.0, min_step=1e-3)
    z = torch.tensor([[0.7, -3.1]], requires_grad=True)
    out = q(z)
    b = torch.tensor([0.5, 2.0])
    assert torch.equal(out.codes, torch.tensor([[1, -2]]))
    assert_close(out.z_q, torch.tensor([[0.5, -4.0]]))
    sq = ((0.7 - 0.5) ** 2 + (-3.1 + 4.0) ** 2) / 2  # mean squared error over the 2 entries
    expected = sq + 0.25 * sq - 1.0 * float(b.sum())
    assert_close(out.loss, torch.tensor(expected))
    out.loss.backward()
    # d/db_i [ mean_i (v_i b_i - z_i)^2 ] = v_i (v_i b_i - z_i); size loss: -gamma * sign
    v = torch.tensor([1.0, -2.0])
    grad_b = v * (v * b - z.detach()[0]) - 1.0
    assert_close(q.basis_raw.grad, grad_b)  # raw > 0 here, so d|raw|/draw = 1
    # commitment: d/dz beta * mean (z - sg[Bv])^2
    assert_close(z.grad, 0.25 * (z.detach() - out.z_q.detach()))


def test_init_range_matches_paper() -> None:
    # Table 3: K = 512, D = 64 gives (-9.76, 9.76)
    assert basis_init_range(512, 64) == pytest.approx(9.76, abs=1e-2)  # paper truncates 9.767
    q = build("llvq", dim=64, codebook_size=512)
    r = basis_init_range(512, 64)
    assert float(q.basis_raw.detach().abs().max()) <= r
    assert float(q.basis.detach().min()) >= q.min_step


def test_basis_never_reaches_zero() -> None:
    q = build("llvq", dim=4, init_basis=[1.0, 1.0, 1.0, 1.0], gamma=-1.0, min_step=1e-3)
    with torch.no_grad():
        q.basis_raw.zero_()  # what a dense size loss drives towards
    assert float(q.basis.min()) == pytest.approx(1e-3)
    out = q(torch.randn(8, 4))
    assert torch.isfinite(out.z_q).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"init_basis": [1.0, 0.0]}, "basis entry of 0"),
    ({"init_basis": [1.0]}, "2 entries"),
    ({"codebook_size": 1}, "codebook_size"),
    ({"min_step": 0.0}, "min_step"),
])
def test_bad_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build("llvq", dim=2, **kwargs)


def test_sparse_size_loss_grows_the_basis() -> None:
    torch.manual_seed(0)
    q = build("llvq", dim=8, codebook_size=512, gamma=1.0)
    before = float(q.basis.sum())
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        q(torch.randn(64, 8) * 0.1).loss.backward()
        opt.step()
    assert float(q.basis.sum()) > before
    assert math.isfinite(float(q.basis.sum()))


def test_rate_knob_reaches_target_bits() -> None:
    # fixed Gaussian latents of unequal spread: the global spacing is steered to the target
    g = torch.Generator().manual_seed(0)
    spread = torch.linspace(0.2, 2.0, 16)
    for target in (2.0, 8.0):
        q = build("llvq", dim=16, gamma=0.0, target_bits=target, rate_gain=0.1)
        for _ in range(150):
            out = q(torch.randn(1024, 16, generator=g) * spread)
        rate = float(out.metrics["rate_bits"])
        assert target / 1.5 <= rate <= target * 1.5, (target, rate)
    assert float(out.metrics["active_dims"]) > 8  # the rate is spread over the coordinates


def test_marginal_entropy_bits_hand_computed() -> None:
    from llvq.quantizers.llvq import marginal_entropy_bits
    v = torch.tensor([[0, 5], [0, 5], [1, 5], [2, 5]])
    assert_close(marginal_entropy_bits(v), torch.tensor([1.5, 0.0]))


def test_rate_knob_needs_gamma_zero() -> None:
    with pytest.raises(ValueError, match="gamma=0"):
        build("llvq", dim=4, target_bits=4.0)


def test_basis_check_is_clear() -> None:
    q = build("llvq", dim=2, init_basis=[1.0, 1.0])
    with torch.no_grad():
        q.basis_raw[0] = float("nan")
    with pytest.raises(ValueError, match="basis became non-finite"):
        q(torch.randn(3, 2))

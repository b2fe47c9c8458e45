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
    ({"gamma": 0.0, "target_bits": 0.0}, "target_bits"),
    ({"gamma": 0.0, "target_bits": 3.0, "rate_gain": 0.0}, "rate_gain"),
    ({"rate_measure": "vector"}, "rate_measure"),
    ({"gamma": 0.0, "target_bits": 3.0, "rate_measure": "marginal"}, "joint, factorised"),
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


def _correlated_latents(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 16) latents on a 3-dim subspace: the active coordinates are strongly correlated."""
    mix = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    return torch.randn(n, 3, generator=g) @ mix


def _plugin_bits(v: torch.Tensor) -> float:
    """Exact plug-in entropy of the rows of ``v`` (torch.unique)."""
    _, counts = torch.unique(v, dim=0, return_counts=True)
    p = counts.double() / v.shape[0]
    return float(-(p * p.log2()).sum())


@pytest.mark.parametrize("target", [2.0, 6.0])
def test_rate_knob_reaches_target_bits(target: float) -> None:
    # the knob steers the joint rate (whole code vectors), here far below the factorised one
    g = torch.Generator().manual_seed(0)
    q = build("llvq", dim=16, gamma=0.0, target_bits=target)
    for _ in range(100):
        out = q(_correlated_latents(2048, g))
    assert target / 1.15 <= float(out.metrics["rate_bits"]) <= target * 1.15
    assert float(out.metrics["factorised_bits"]) > 1.1 * float(out.metrics["joint_bits"])
    q.eval()  # the rate of fresh latents, as the bench measures it (32,768 vectors)
    held_out = _plugin_bits(q.encode(_correlated_latents(32768, g)))
    assert target / 1.2 <= held_out <= target * 1.2, (target, held_out)


def test_factorised_rate_measure_undershoots_the_joint_rate() -> None:
    # the old controller (rate_measure=factorised) holds Σ_j H(v_j) at the target, so the
    # joint rate of correlated codes ends far below it
    g = torch.Generator().manual_seed(0)
    q = build("llvq", dim=16, gamma=0.0, target_bits=6.0, rate_measure="factorised")
    for _ in range(100):
        out = q(_correlated_latents(2048, g))
    assert float(out.metrics["rate_bits"]) == float(out.metrics["factorised_bits"])
    assert 6.0 / 1.15 <= float(out.metrics["factorised_bits"]) <= 6.0 * 1.15
    assert float(out.metrics["joint_bits"]) < 0.8 * float(out.metrics["factorised_bits"])


def test_rate_knob_moves_the_rate_toward_its_target() -> None:
    # without calibration c starts at 0 (every code 0 here); the knob brings the rate up
    g = torch.Generator().manual_seed(0)
    q = build("llvq", dim=16, gamma=0.0, target_bits=4.0, calibrate=False,
              init_basis=[100.0] * 16)
    rates = [float(q(_correlated_latents(2048, g)).metrics["rate_bits"]) for _ in range(150)]
    assert rates[0] < 0.5
    assert all(abs(math.log2(r / 4.0)) < 0.25 for r in rates[-20:]), rates[-20:]


def test_calibration_sets_the_first_batch_rate() -> None:
    g = torch.Generator().manual_seed(0)
    q = build("llvq", dim=16, gamma=0.0, target_bits=5.0)
    assert not bool(q.rate_calibrated)
    z = _correlated_latents(2048, g)
    q(z)
    assert bool(q.rate_calibrated)
    c = float(q.log2_spacing)
    q.eval()  # the calibrated spacing gives the target rate on that batch (before the step)
    with torch.no_grad():
        q.log2_spacing.fill_(c)
    from llvq.quantizers.llvq import joint_entropy_bits
    assert float(joint_entropy_bits(q.encode(z), "chao_shen")) == pytest.approx(5.0, rel=0.05)
    # saved and loaded with the model: a reloaded quantizer does not calibrate again
    q2 = build("llvq", dim=16, gamma=0.0, target_bits=5.0)
    q2.load_state_dict(q.state_dict())
    q2.train()
    q2(z)
    assert float(q2.log2_spacing) == pytest.approx(c, abs=0.2)  # one knob step, no re-bisection


def test_state_dict_without_calibration_flag_loads() -> None:
    # checkpoints written before `rate_calibrated` existed load, and count as calibrated
    q = build("llvq", dim=4, gamma=0.0, target_bits=3.0)
    state = {k: v for k, v in q.state_dict().items() if k != "rate_calibrated"}
    state["log2_spacing"] = torch.tensor(1.5)
    q.load_state_dict(state)
    q(torch.randn(64, 4))
    assert bool(q.rate_calibrated)
    assert abs(float(q.log2_spacing) - 1.5) < 0.5  # steered one step, not re-bisected


def test_marginal_entropy_bits_hand_computed() -> None:
    from llvq.quantizers.llvq import marginal_entropy_bits
    v = torch.tensor([[0, 5], [0, 5], [1, 5], [2, 5]])
    assert_close(marginal_entropy_bits(v), torch.tensor([1.5, 0.0]))


@pytest.mark.parametrize("n, d, spread", [(1, 3, 1), (7, 2, 1), (60, 4, 2), (50, 5, 2**40)])
def test_hashed_joint_entropy_matches_exact_plugin(n: int, d: int, spread: int) -> None:
    from llvq.quantizers.llvq import joint_entropy_bits
    g = torch.Generator().manual_seed(n)
    v = torch.randint(-spread, spread + 1, (n, d), generator=g)
    assert float(joint_entropy_bits(v)) == pytest.approx(_plugin_bits(v), abs=1e-4)
    assert float(joint_entropy_bits(v.float())) == pytest.approx(_plugin_bits(v), abs=1e-4)


def test_hashed_joint_entropy_of_a_batch() -> None:
    # a batch of 2048 distinct rows: exact in a large table; in the knob's 2^16 buckets a few
    # dozen collisions lower it by a few hundredths of a bit
    from llvq.quantizers.llvq import joint_entropy_bits
    g = torch.Generator().manual_seed(0)
    v = torch.randint(-2**40, 2**40, (2048, 64), generator=g)
    assert float(joint_entropy_bits(v, buckets=2**26)) == pytest.approx(11.0, abs=1e-3)
    assert 10.9 < float(joint_entropy_bits(v)) <= 11.0


def test_joint_entropy_hand_computed() -> None:
    from llvq.quantizers.llvq import entropy_of_counts, joint_entropy_bits
    v = torch.tensor([[0, 1], [0, 1], [2, 3], [5, -7]])  # p = 1/2, 1/4, 1/4
    assert float(joint_entropy_bits(v)) == pytest.approx(1.5)
    assert float(joint_entropy_bits(torch.zeros(5, 3, dtype=torch.long))) == 0.0
    # Chao–Shen: counts (2, 1, 1), n = 4, f1 = 2, coverage 1/2: p = (1/4, 1/8, 1/8)
    terms = [(p, 1 - (1 - p) ** 4) for p in (0.25, 0.125, 0.125)]
    expected = sum(-p * math.log2(p) / inc for p, inc in terms)
    assert float(entropy_of_counts(torch.tensor([2.0, 1.0, 1.0, 0.0]), "chao_shen")) == \
        pytest.approx(expected, rel=1e-5)
    assert float(entropy_of_counts(torch.tensor([5.0, 0.0]), "chao_shen")) == 0.0
    assert math.isfinite(float(entropy_of_counts(torch.ones(8), "chao_shen")))  # all singletons


def test_chao_shen_corrects_the_small_sample_bias() -> None:
    # 2048 draws from a uniform law on 1024 symbols (10 bits): plug-in 9.6, Chao–Shen 10.2
    from llvq.quantizers.llvq import joint_entropy_bits
    g = torch.Generator().manual_seed(0)
    v = torch.randint(0, 1024, (2048, 1), generator=g)
    plugin, cs = float(joint_entropy_bits(v)), float(joint_entropy_bits(v, "chao_shen"))
    assert plugin < 9.7
    assert abs(cs - 10.0) < abs(plugin - 10.0) and abs(cs - 10.0) < 0.3


def test_rate_knob_needs_gamma_zero() -> None:
    with pytest.raises(ValueError, match="gamma=0"):
        build("llvq", dim=4, target_bits=4.0)


def test_basis_check_is_clear() -> None:
    q = build("llvq", dim=2, init_basis=[1.0, 1.0])
    with torch.no_grad():
        q.basis_raw[0] = float("nan")
    with pytest.raises(ValueError, match="basis became non-finite"):
        q(torch.randn(3, 2))


def test_unknown_entropy_estimator_is_clear() -> None:
    from llvq.quantizers.llvq import entropy_of_counts
    with pytest.raises(ValueError, match="plugin, chao_shen"):
        entropy_of_counts(torch.ones(3), "miller_madow")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rate_knob_does_not_synchronise_on_cuda() -> None:
    # the joint rate and the knob's step run without a host-device sync
    q = build("llvq", dim=16, gamma=0.0, target_bits=4.0).cuda()
    v = torch.randint(-3, 4, (2048, 16), device="cuda")
    rate = q._rate(v, "joint")  # builds the hash weights on the device first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        rate = q._rate(v, "joint")
        q._steer_rate(rate)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert math.isfinite(float(q.log2_spacing))

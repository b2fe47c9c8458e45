"""Lattice design (llvq.lattices.design): decoder, objective, parametrizations, convergence, files."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open

from llvq.lattices import _ckernel, closest_point, get_lattice, load_generator
from llvq.lattices.design import (
    LatticeParametrization,
    auto_parts,
    decode_coordinates,
    design_lattice,
    nsm_loss,
    precise_nsm,
    save_designed,
    splice_generator,
)
from llvq.quantizers import build

HEXAGONAL, A3_STAR = 5 / (36 * math.sqrt(3)), 0.078543


def _random_generator(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n, generator=g, dtype=torch.float64) + 2 * torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("gen", ["random5", "E8", "D5*"])
def test_decoder_is_exact(gen: str, compiled: bool, monkeypatch) -> None:
    if not compiled:
        monkeypatch.setattr(_ckernel, "_KERNEL", [None])  # the pure-torch fallback
    g = _random_generator(5, 3) if gen == "random5" else get_lattice(gen).generator
    x = torch.randn(2000, g.shape[0], generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64) * 3
    z = decode_coordinates(g, x)
    assert torch.equal(z, torch.round(z))
    d_ours = (x - z @ g).square().sum(-1)
    d_ref = (x - closest_point(g, x, "exact")).square().sum(-1)
    torch.testing.assert_close(d_ours, d_ref, rtol=0, atol=1e-9)


def test_nsm_loss_gradient_is_agrell_eriksson() -> None:
    """Autograd through e = (u - z) B equals the closed form of Agrell & Eriksson (1998)."""
    b = torch.tensor([[1.0, 0.0], [0.4, 0.9]], dtype=torch.float64, requires_grad=True)
    u = torch.rand(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    nsm_loss(b, u).backward()
    bd = b.detach()
    z = decode_coordinates(bd, u @ bd)
    e = (u - z) @ bd
    vol = float(torch.linalg.det(bd))
    mse = e.square().sum(-1).mean()
    grad = (2 * (u - z).T @ e / len(u) - 2 * mse / 2 * torch.linalg.inv(bd).T) / (2 * vol)
    torch.testing.assert_close(b.grad, grad)


def test_splice_z_plus_z_is_one_twelfth() -> None:
    g = splice_generator([1, 1])
    torch.testing.assert_close(g, torch.eye(2, dtype=torch.float64))
    value, se = precise_nsm(g, 100_000)
    assert abs(value - 1 / 12) < 4 * se


def test_splice_is_weighted_geometric_mean() -> None:
    """E8 ⊕ D5*, optimally scaled: G = G(E8)^(8/13) G(D5*)^(5/13) ≈ 0.073174 (nsm.md)."""
    g = splice_generator(["E8", "D5*"])
    assert abs(float(torch.linalg.det(g)) - 1) < 1e-9
    value, se = precise_nsm(g, 100_000)
    assert abs(value - 0.073174) < 4 * se + 3e-5


def test_auto_parts() -> None:
    assert auto_parts(2) == (1, 1)
    assert auto_parts(3) == (2, 1)
    assert auto_parts(17) == (16, 1)
    assert all(a + b == n for n in range(2, 25) for a, b in [auto_parts(n)])


@pytest.mark.parametrize("method", ["householder", "matrix_exp"])
def test_fusion_is_orthogonal_and_starts_at_splice(method: str) -> None:
    p = LatticeParametrization(6, method, parts=[4, 2], seed=1)
    q = p.orthogonal().detach()
    torch.testing.assert_close(q @ q.T, torch.eye(6, dtype=torch.float64))
    g = p().detach()
    assert abs(float(torch.linalg.det(g).abs()) - 1) < 1e-9
    assert float((g - splice_generator([4, 2])).abs().max()) < 0.05


def test_reduction_keeps_the_lattice() -> None:
    p = LatticeParametrization(4, "free", seed=2)
    before = p().detach()
    p.reduce_()
    after = p().detach()
    assert torch.equal(after, after.tril())
    # same lattice up to rotation: equal Gram determinants and the same (rotated) NSM
    (g1, s1), (g2, s2) = precise_nsm(before, 50_000), precise_nsm(after, 50_000)
    assert abs(g1 - g2) < 4 * math.hypot(s1, s2)
    torch.testing.assert_close(torch.linalg.det(after @ after.T), torch.linalg.det(before @ before.T))
    shortest = [float(torch.linalg.norm(g, dim=1).min()) for g in (before, after)]
    assert shortest[1] <= shortest[0] + 1e-12  # LLL's first vector is no longer than before


@pytest.mark.parametrize("method", ["householder", "matrix_exp"])
def test_rebase_keeps_the_lattice_and_restarts_q(method: str) -> None:
    p = LatticeParametrization(6, method, parts=[4, 2], rebase=True, seed=3)
    with torch.no_grad():
        for t in p.parameters():
            t.add_(0.3 * torch.randn(t.shape, generator=torch.Generator().manual_seed(4),
                                     dtype=torch.float64))
    before = p().detach()
    p.reduce_()
    after = p().detach()
    torch.testing.assert_close(p.orthogonal().detach(), torch.eye(6, dtype=torch.float64))
    # the same lattice: before = U after for a unimodular U
    u = before @ torch.linalg.inv(after)
    torch.testing.assert_close(u, u.round(), atol=1e-8, rtol=0)
    assert abs(abs(float(torch.linalg.det(u.round()))) - 1) < 1e-9


def test_dim2_random_start_reaches_hexagonal() -> None:
    r = design_lattice(2, "free", steps=600, batch_size=512, lr=1.0, anneal=100, seed=0,
                       eval_samples=200_000)
    assert abs(r.nsm / HEXAGONAL - 1) < 0.005, r.nsm


def test_dim3_random_start_reaches_a3_star() -> None:
    r = design_lattice(3, "free", steps=600, batch_size=512, lr=1.0, anneal=100, seed=1,
                       eval_samples=200_000)
    assert abs(r.nsm / A3_STAR - 1) < 0.01, r.nsm


def test_design_is_seedable() -> None:
    a = design_lattice(3, "matrix_exp", steps=20, batch_size=256, seed=5, eval_samples=1000)
    b = design_lattice(3, "matrix_exp", steps=20, batch_size=256, seed=5, eval_samples=1000)
    assert torch.equal(a.generator, b.generator) and a.history == b.history


@pytest.mark.slow
@pytest.mark.parametrize("method", ["householder", "matrix_exp"])
def test_fusion_beats_splice_in_dim13(method: str) -> None:
    r = design_lattice(13, method, steps=300, batch_size=1024, lr=2.0, anneal=200,
                       eval_samples=100_000)
    splice, se = precise_nsm(splice_generator(auto_parts(13)), 100_000)
    assert r.nsm < splice - 4 * (se + r.se), (r.nsm, splice)


def test_saved_generator_loads_and_quantizes_identically(tmp_path) -> None:
    g = design_lattice(3, "free", steps=50, batch_size=256, seed=0, eval_samples=2000).generator
    path = save_designed(tmp_path / "g.safetensors", g, nsm=0.0785, se=1e-4, method="free", dim=3)
    torch.testing.assert_close(load_generator(path), g, rtol=0, atol=0)
    with safe_open(str(path), "pt") as f:
        assert float(f.metadata()["nsm"]) == 0.0785 and f.metadata()["method"] == "free"
    q = build("lattice", dim=6, generator=str(path), learn_scale=False).eval()
    z = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    out = q(z)
    expected = closest_point(g, z.double().reshape(-1, 3)).reshape(50, 6).float()
    torch.testing.assert_close(out.z_q, expected)
    torch.testing.assert_close(q.decode(q.encode(z)), out.z_q)


@pytest.mark.parametrize("kwargs, match", [
    ({"dim": 0}, "lattice.dim"),
    ({"dim": 4, "method": "nope"}, "lattice.method"),
    ({"dim": 13, "method": "splice", "parts": ["nope", "E8"]}, "unknown seed lattice"),
    ({"dim": 13, "method": "householder", "parts": [8, 4]}, "add up"),
    ({"dim": 1, "method": "matrix_exp"}, "lattice.dim >= 2"),
    ({"dim": 7, "method": "householder", "parts": ["missing.safetensors", 1]}, "does not exist"),
])
def test_bad_settings_give_one_clear_error(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        LatticeParametrization(**kwargs)


def test_designed_lattice_file_is_a_part(tmp_path) -> None:
    """A generator file splices like the named lattice; its recorded NSM sets the scale."""
    e6 = get_lattice("E6*").generator
    path = save_designed(tmp_path / "e6.safetensors", e6 / e6.det().abs() ** (1 / 6), nsm=0.074244)
    torch.testing.assert_close(splice_generator([str(path), "Z1"]), splice_generator(["E6*", "Z1"]))
    fused = LatticeParametrization(7, "householder", parts=[path, 1], rebase=True)
    assert fused.parts == [str(path), 1] and fused().shape == (7, 7)
    # a file without metadata: the part's NSM is estimated (20,000 samples, about 0.2 % here)
    bare = tmp_path / "bare.safetensors"
    save_designed(bare, e6)
    torch.testing.assert_close(splice_generator([bare, "Z1"]), splice_generator(["E6*", "Z1"]),
                               rtol=3e-3, atol=0)

"""VQ and EMA-VQ: nearest codeword, EMA update, k-means init, dead-code restart, rotation trick,
bad settings."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from llvq.quantizers import build


def test_vq_picks_nearest_codeword_brute_force() -> None:
    q = build("vq", dim=4, codebook_size=16)
    with torch.no_grad():
        q.codebook.normal_()
    z = torch.randn(100, 4)
    brute = torch.cdist(z, q.codebook).argmin(1)
    assert torch.equal(q.encode(z), brute)


def test_vq_losses_hand_computed() -> None:
    q = build("vq", dim=2, codebook_size=2, beta=0.25, kmeans_init=False,
              restart_dead_codes=False)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    z = torch.tensor([[0.9, 0.6]])
    out = q(z)
    assert out.codes.tolist() == [1]
    sq = (0.1 ** 2 + 0.4 ** 2) / 2
    assert_close(out.loss, torch.tensor(1.25 * sq))


def test_ema_moves_codeword_towards_data() -> None:
    q = build("vq_ema", dim=2, codebook_size=2, decay=0.5, kmeans_init=False,
              restart_dead_codes=False)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [5.0, 5.0]]))
        q.embed_sum.copy_(q.codebook)
    target = torch.tensor([[1.0, 1.0]]).repeat(10, 1)
    for _ in range(30):
        q(target)
    assert_close(q.codebook[0], torch.tensor([1.0, 1.0]), atol=1e-3, rtol=0)
    q.eval()
    before = q.codebook.clone()
    q(target + 3)
    assert torch.equal(q.codebook, before)  # no update in eval mode


def test_ema_restarts_dead_codes() -> None:
    torch.manual_seed(0)
    q = build("vq_ema", dim=2, codebook_size=8, kmeans_init=False, restart_dead_codes=True,
              dead_code_threshold=1.0)
    z = torch.randn(64, 2) + 10.0  # far from every initial codeword
    out = q(z)
    assert float(out.metrics["restarted"]) > 0
    assert (q.codebook.norm(dim=1) > 5).sum() >= 1  # restarted codewords sit on the data


def _clusters(n: int, g: torch.Generator) -> torch.Tensor:
    centres = torch.randn(32, 8, generator=torch.Generator().manual_seed(0)) * 3  # 32 clusters
    pick = torch.randint(0, 32, (n,), generator=g)
    return centres[pick] + 0.1 * torch.randn(n, 8, generator=g)


@pytest.mark.parametrize("name", ["vq", "vq_ema"])
def test_defaults_use_the_codebook(name: str) -> None:
    # k-means init + dead-code restart (the defaults) against the paper's uniform init
    torch.manual_seed(0)
    used = {}
    for fixes in (True, False):
        q = build(name, dim=8, codebook_size=32, kmeans_init=fixes, restart_dead_codes=fixes)
        opt = torch.optim.Adam(q.parameters(), lr=1e-2) if name == "vq" else None
        g = torch.Generator().manual_seed(1)
        for _ in range(60):
            out = q(_clusters(256, g))
            if opt is not None:
                opt.zero_grad()
                out.loss.backward()
                opt.step()
        q.eval()
        used[fixes] = q.encode(_clusters(2048, g)).unique().numel()
    assert used[True] >= 0.9 * 32, used
    assert used[True] > used[False], used


def test_kmeans_init_once_and_flag_in_state_dict() -> None:
    torch.manual_seed(0)
    q = build("vq", dim=2, codebook_size=4, restart_dead_codes=False)
    assert not bool(q.initialized)
    z = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]).repeat(8, 1)
    q(z)
    assert bool(q.initialized)
    # every codeword is a k-means centre of the data (a cluster or the mean of two), not ±1/K
    assert torch.cdist(q.codebook.detach(), z).min(1).values.max() <= 5.0 + 1e-4
    assert float(q.codebook.detach().abs().max()) >= 5.0
    fresh = build("vq", dim=2, codebook_size=4, restart_dead_codes=False)
    fresh.load_state_dict(q.state_dict())
    before = fresh.codebook.detach().clone()
    fresh(z + 100.0)  # a loaded, initialised codebook is not re-initialised
    assert_close(fresh.codebook.detach(), before)


def test_rotation_trick_value_and_gradient() -> None:
    q = build("vq", dim=4, codebook_size=8, rotation_trick=True, restart_dead_codes=False)
    z = torch.randn(16, 4, requires_grad=True)
    out = q(z)
    assert_close(out.z_q, q.decode(out.codes).detach())  # the value is the codeword
    out.z_q.sum().backward()
    assert not torch.allclose(z.grad, torch.ones_like(z))  # not the straight-through identity


@pytest.mark.parametrize("name, kwargs, match", [
    ("vq", {"codebook_size": 1}, "codebook_size"),
    ("vq_ema", {"codebook_size": 0}, "codebook_size"),
    ("vq_ema", {"decay": 1.0}, "decay"),
    ("vq", {"dim": 0}, "dim"),
    ("vq", {"usage_decay": 0.0}, "usage_decay"),
])
def test_bad_settings(name: str, kwargs: dict, match: str) -> None:
    kwargs = {"dim": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        build(name, **kwargs)

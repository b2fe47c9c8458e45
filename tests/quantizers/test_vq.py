"""VQ and EMA-VQ: nearest codeword, EMA update, dead-code restart, bad settings."""

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
    q = build("vq", dim=2, codebook_size=2, beta=0.25)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    z = torch.tensor([[0.9, 0.6]])
    out = q(z)
    assert out.codes.tolist() == [1]
    sq = (0.1 ** 2 + 0.4 ** 2) / 2
    assert_close(out.loss, torch.tensor(1.25 * sq))


def test_ema_moves_codeword_towards_data() -> None:
    q = build("vq_ema", dim=2, codebook_size=2, decay=0.5)
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
    q = build("vq_ema", dim=2, codebook_size=8, restart_dead_codes=True, dead_code_threshold=1.0)
    z = torch.randn(64, 2) + 10.0  # far from every initial codeword
    out = q(z)
    assert float(out.metrics["restarted"]) > 0
    assert (q.codebook.norm(dim=1) > 5).sum() >= 1  # restarted codewords sit on the data


@pytest.mark.parametrize("name, kwargs, match", [
    ("vq", {"codebook_size": 1}, "codebook_size"),
    ("vq_ema", {"codebook_size": 0}, "codebook_size"),
    ("vq_ema", {"decay": 1.0}, "decay"),
    ("vq", {"dim": 0}, "dim"),
])
def test_bad_settings(name: str, kwargs: dict, match: str) -> None:
    kwargs = {"dim": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        build(name, **kwargs)

"""Value checks without a host-device sync per step (the GPU path), exercised on CPU.

On a GPU, :meth:`Quantizer.guard` gathers the NaN/Inf and code-range checks on the device and
reads them on the first forward call, then every ``check_every`` calls, and in ``encode``.
These tests force that path on CPU (``deferred`` patched to True) and forbid every host read of
a tensor value between the reads, which is what ``torch.cuda.set_sync_debug_mode("error")``
would catch on a GPU (that test runs under ``-m gpu``).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from llvq.quantizers import base, build, vq_ema

TRAINING = ["llvq", "e8", "zn", "vq", "vq_ema"]


@pytest.fixture
def on_device(monkeypatch):
    """Treat every tensor as if it lived on a GPU: checks are gathered, not read."""
    monkeypatch.setattr(base, "deferred", lambda t: True)
    monkeypatch.setattr(vq_ema, "deferred", lambda t: True)


@contextlib.contextmanager
def no_host_reads(monkeypatch):
    """Fail on any ``bool``/``float``/``int``/``item`` of a tensor (a sync on a GPU)."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("a tensor value was read on the host (a device sync)")
    with monkeypatch.context() as m:
        for attr in ("__bool__", "__float__", "__int__", "item", "tolist"):
            m.setattr(torch.Tensor, attr, refuse)
        yield


def _batch(seed: int = 0) -> torch.Tensor:
    return torch.randn(64, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", TRAINING)
def test_training_steps_read_nothing_on_the_host_between_checks(name, on_device,
                                                                 monkeypatch) -> None:
    q = build(name, dim=8).train()
    q(_batch(0))  # the first call reads its checks (and initialises codebooks)
    with no_host_reads(monkeypatch):
        for step in range(1, 4):
            out = q(_batch(step))
    assert out.z_q.shape == (64, 8)


@pytest.mark.parametrize("name", ["llvq", "e8", "vq_ema"])
def test_a_nan_after_the_first_call_is_raised_within_check_every_calls(name, on_device) -> None:
    q = build(name, dim=8).train()
    q.check_every = 4
    q(_batch(0))  # call 1: read, all good
    bad = _batch(1)
    bad[3, 2] = float("nan")
    q(bad)  # call 2: gathered, not raised yet
    q(_batch(2))  # call 3
    q(_batch(3))  # call 4
    with pytest.raises(ValueError, match=rf"quantizer '{name}'.*(non-finite|Inf/NaN)"):
        q(_batch(4))  # call 5 = 1 + check_every: read


def test_the_first_call_reads_its_checks(on_device) -> None:
    q = build("llvq", dim=8).train()
    bad = _batch(0)
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite value"):
        q(bad)


@pytest.mark.parametrize("name", ["llvq", "e8", "zn"])
def test_encode_always_reads_its_checks(name, on_device) -> None:
    q = build(name, dim=8).eval()
    q(_batch(0))
    bad = _batch(1)
    bad[1, 1] = float("nan")
    q(_batch(2))  # a good forward in between: encode still reads at once
    with pytest.raises(ValueError, match="non-finite"):
        q.encode(bad)
    huge = _batch(3) * 1e30  # beyond +-2^53 lattice coordinates
    with pytest.raises(ValueError, match="2\\^53"):
        q.encode(huge)


def test_vq_ema_skips_a_non_finite_update_on_the_device(on_device) -> None:
    q = build("vq_ema", dim=8, codebook_size=16).train()
    q.check_every = 10
    q(_batch(0))
    state = {k: v.clone() for k, v in q.state_dict().items()}
    huge = torch.full((64, 8), 1e38)  # finite, but its codeword sums overflow float32
    q(huge)  # gathered: the codebook update is undone on the device, no error yet
    for key in ("codebook", "cluster_size", "embed_sum"):
        assert torch.isfinite(getattr(q, key)).all()
        assert torch.equal(getattr(q, key), state[key]), key
    with pytest.raises(ValueError, match="update was skipped"):
        q.flush_checks()


def test_cpu_checks_every_call() -> None:
    # without the patch (a CPU tensor), the second call raises at once with the count
    q = build("llvq", dim=8).train()
    q(_batch(0))
    bad = _batch(1)
    bad[:2, 0] = float("nan")
    with pytest.raises(ValueError, match="received 2 non-finite value"):
        q(bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", TRAINING)
def test_training_steps_do_not_synchronise_on_cuda(name) -> None:
    q = build(name, dim=8).cuda().train()
    q(_batch(0).cuda())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 4):
            q(_batch(step).cuda())
    finally:
        torch.cuda.set_sync_debug_mode("default")

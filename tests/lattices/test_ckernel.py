"""The compiled Schnorr–Euchner kernel (llvq.lattices._ckernel) against the torch search."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from llvq.lattices import _ckernel, closest_point, get_lattice, sphere

needs_cc = pytest.mark.skipif(_ckernel.kernel() is None, reason="no C compiler")


def _points(n: int, num: int, seed: int, spread: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num, n, generator=g, dtype=torch.float64) * spread


@needs_cc
@pytest.mark.parametrize("name", ["E6", "E7", "Lambda16"])
def test_c_and_torch_paths_agree(name: str, monkeypatch) -> None:
    g = get_lattice(name).generator
    x = _points(g.shape[0], 300, 0)
    y_c = closest_point(g, x, "exact")
    with monkeypatch.context() as m:
        m.setattr(_ckernel, "_KERNEL", [None])  # the torch fallback
        assert _ckernel.kernel() is None
        y_t = closest_point(g, x, "exact")
    d_c, d_t = (x - y_c).square().sum(-1), (x - y_t).square().sum(-1)
    torch.testing.assert_close(d_c, d_t, rtol=0, atol=1e-9)
    assert (y_c == y_t).all(-1).double().mean() > 0.99  # same points up to exact ties


@needs_cc
def test_threads_and_dtype(monkeypatch) -> None:
    """Row splitting over threads gives the same answer; output keeps the input dtype."""
    g = get_lattice("E8").generator
    x = _points(8, 5000, 1).float()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    y1 = closest_point(g, x, "exact")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    y3 = closest_point(g, x, "exact")
    assert y3.dtype == torch.float32 and torch.equal(y1, y3)
    assert torch.equal(y1, get_lattice("E8").closest_point(x))  # Conway–Sloane decoder


@needs_cc
def test_small_batches_split_in_high_dimension(monkeypatch) -> None:
    """Above dimension 8 fewer rows per thread are needed (the search costs more per point):
    256 rows in dimension 20 run on 4 threads of the shared pool with the single-thread answer."""
    assert _ckernel.min_rows_per_thread(8) == 2048 and _ckernel.min_rows_per_thread(20) == 32
    assert _ckernel.min_rows_per_thread(24) == 32 and _ckernel.min_rows_per_thread(12) == 512
    g = get_lattice("Lambda16").generator
    g20 = torch.block_diag(g, get_lattice("D4").generator)
    x = _points(20, 256, 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    y1 = closest_point(g20, x, "exact")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    y4 = closest_point(g20, x, "exact")
    assert torch.equal(y1, y4)
    assert _ckernel._POOL and _ckernel._POOL[0]._max_workers >= 4


def test_decode_returns_none_when_disabled(monkeypatch) -> None:
    monkeypatch.setattr(_ckernel, "_KERNEL", [None])
    basis = sphere.prepare(get_lattice("E6").generator)
    assert _ckernel.decode(torch.zeros(4, 6).double().numpy(), basis.upper.numpy(),
                           basis.diag.square().numpy()) is None


def test_no_compiler_is_a_quiet_fallback(fresh_kernel, caplog) -> None:
    """A failing build logs one warning, returns None, and decoding still works."""
    tmp_path = fresh_kernel(_ckernel, "_KERNEL", compiler=False)
    with caplog.at_level(logging.WARNING, logger=_ckernel.__name__):
        assert _ckernel.kernel() is None
        assert _ckernel.kernel() is None
        g = get_lattice("E6").generator
        y = closest_point(g, _points(6, 50, 2), "exact")
    assert y.shape == (50, 6)
    assert len([r for r in caplog.records if r.name == _ckernel.__name__]) == 1
    assert list(tmp_path.glob("*.so")) == [] and list(tmp_path.glob("*.c")) == []


def test_env_switch_disables(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(_ckernel, "_KERNEL", [])
    monkeypatch.setenv("LLVQ_CACHE", str(tmp_path))
    monkeypatch.setenv("LLVQ_NO_CKERNEL", "1")
    assert _ckernel.kernel() is None
    assert list(tmp_path.iterdir()) == []


@needs_cc
def test_concurrent_first_build(tmp_path) -> None:
    """Two processes building into an empty cache both load a working kernel."""
    code = ("from llvq.lattices import _ckernel; import sys; "
            "sys.exit(0 if _ckernel.kernel() is not None else 1)")
    env = {"LLVQ_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin:/usr/local/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert len(list(tmp_path.glob("*.so"))) == 1 and list(tmp_path.glob("*.c")) == []

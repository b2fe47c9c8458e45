"""The compiled D_n / D_n^+ decoders (llvq.lattices._cfast) against the torch decoders."""

from __future__ import annotations

import logging

import pytest
import torch

from llvq.lattices import _cfast, _ckernel, fast, get_lattice

needs_cc = pytest.mark.skipif(_cfast.kernels() is None, reason="no C compiler")
DTYPES = [torch.float32, torch.float64]


def _torch_dn_plus(n: int) -> fast.CosetDecoder:
    glue = torch.stack([torch.zeros(n), torch.full((n,), 0.5)]).double()
    return fast.CosetDecoder(fast._decode_dn_torch, glue)


def _cases(n: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    """Gaussian points, points on Voronoi boundaries / ties, and far-away points."""
    g = torch.Generator().manual_seed(seed)
    num = 3003  # not a multiple of 8: the blocked float32 n = 8 path has a tail
    cases = [torch.randn(num, n, generator=g, dtype=torch.float64) * s for s in (0.7, 3.0)]
    cases.append(torch.randint(-9, 10, (num, n), generator=g) / 2.0)  # half-integers: ties
    cases.append(torch.randint(-17, 18, (num, n), generator=g) / 4.0)  # E8 boundaries
    ties = torch.randint(-3, 4, (num, n), generator=g).double()
    ties[:, : n // 2] += 0.5  # several equal largest rounding errors
    cases.append(ties)
    cases.append(torch.randn(num, n, generator=g, dtype=torch.float64) * 1e6)
    cases.append(torch.randint(-2**22, 2**22, (num, n), generator=g) + 0.5)  # float32 ulp 1/2
    big = torch.randn(num, n, generator=g, dtype=torch.float64) * 2.0**30  # beyond 2^24
    cases.append(big)
    cases.append(torch.zeros(1, n))
    cases.append(torch.full((2, n), 0.25))
    return [c.to(dtype) for c in cases]


@needs_cc
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [2, 3, 8, 12, 16, 24, 40])
def test_dn_c_equals_torch(n: int, dtype: torch.dtype) -> None:
    for i, x in enumerate(_cases(n, dtype, n)):
        assert _cfast.usable(x)
        y_c, y_t = _cfast.decode_dn(x), fast._decode_dn_torch(x)
        assert y_c.dtype == dtype and y_c.shape == x.shape
        assert torch.equal(y_c, y_t), (i, (y_c != y_t).any(-1).sum())
        assert torch.equal(fast.decode_dn(x), y_t)
        even = torch.remainder(torch.remainder(y_c, 2).sum(-1), 2) == 0
        exact = x.abs().amax(-1) < 2**22  # a +-1 step is lost beyond float32 integers
        assert even[exact].all()


@needs_cc
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [2, 4, 8, 16, 24])
def test_dn_plus_c_equals_torch(n: int, dtype: torch.dtype) -> None:
    ref = _torch_dn_plus(n)
    for i, x in enumerate(_cases(n, dtype, 100 + n)):
        y_c, y_t = _cfast.decode_dn_plus(x), ref(x)
        assert y_c.dtype == dtype and y_c.shape == x.shape
        assert torch.equal(y_c, y_t), (i, (y_c != y_t).any(-1).sum())


@needs_cc
@pytest.mark.parametrize("dtype", DTYPES)
def test_e8_lattice_uses_c_and_matches(dtype: torch.dtype, monkeypatch) -> None:
    e8 = get_lattice("E8")
    assert e8.fast_decoder._dn_plus
    x = torch.randn(4, 500, 8, dtype=dtype) * 2
    y = e8.closest_point(x)
    assert y.shape == x.shape and y.dtype == dtype
    assert torch.equal(y, _torch_dn_plus(8)(x))
    monkeypatch.setattr(_cfast, "_KERNELS", [None])
    assert torch.equal(e8.closest_point(x), y)


@needs_cc
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_and_batched(dtype: torch.dtype) -> None:
    x = torch.randn(300, 16, 3, dtype=dtype).transpose(1, 2) * 3  # (300, 3, 16), strided
    assert not x.is_contiguous()
    assert torch.equal(fast.decode_dn(x), fast._decode_dn_torch(x))
    x8 = x[..., ::2]  # (300, 3, 8), strided
    assert torch.equal(get_lattice("E8").closest_point(x8), _torch_dn_plus(8)(x8))
    empty = torch.zeros(0, 8, dtype=dtype)
    assert fast.decode_dn(empty).shape == (0, 8)
    assert get_lattice("E8").closest_point(empty).shape == (0, 8)


@needs_cc
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_rows(dtype: torch.dtype) -> None:
    x = torch.randn(64, 8, dtype=dtype)
    x[::4, 3] = float("nan")
    x[1::4, 5] = float("inf")
    x[2::4, 0] = -float("inf")
    for y_c, y_t in [(_cfast.decode_dn(x), fast._decode_dn_torch(x)),
                     (_cfast.decode_dn_plus(x), _torch_dn_plus(8)(x))]:
        assert torch.equal(y_c.nan_to_num(7.0), y_t.nan_to_num(7.0))


def test_autograd_and_other_devices_use_torch() -> None:
    x = torch.randn(10, 8, requires_grad=True)
    assert not _cfast.usable(x)
    y = fast.decode_dn(x)
    assert y.grad_fn is not None
    with torch.no_grad():
        assert _cfast.usable(x) == (_cfast.kernels() is not None)
    assert not _cfast.usable(torch.randn(10, 8).half())
    assert not _cfast.usable(torch.randn(10, 8).to(torch.bfloat16))


def test_fallback_when_unavailable(monkeypatch) -> None:
    monkeypatch.setattr(_cfast, "_KERNELS", [None])
    assert _cfast.kernels() is None
    x = torch.randn(200, 8) * 2
    assert not _cfast.usable(x)
    assert torch.equal(fast.decode_dn(x), fast._decode_dn_torch(x))
    assert torch.equal(get_lattice("E8").closest_point(x), _torch_dn_plus(8)(x))


def test_no_compiler_is_a_quiet_fallback(fresh_kernel, caplog) -> None:
    tmp_path = fresh_kernel(_cfast, "_KERNELS", compiler=False)
    with caplog.at_level(logging.WARNING, logger=_ckernel.__name__):
        assert _cfast.kernels() is None
        assert _cfast.kernels() is None
        y = get_lattice("E8").closest_point(torch.randn(50, 8))
    assert y.shape == (50, 8)
    warned = [r.getMessage() for r in caplog.records if r.name == _ckernel.__name__]
    assert len(warned) == 1 and "D_n/E8 decoders" in warned[0]
    assert list(tmp_path.glob("*.so")) == [] and list(tmp_path.glob("*.c")) == []


def test_env_switch_disables(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(_cfast, "_KERNELS", [])
    monkeypatch.setenv("LLVQ_CACHE", str(tmp_path))
    monkeypatch.setenv("LLVQ_NO_CKERNEL", "1")
    assert _cfast.kernels() is None
    assert not _cfast.usable(torch.randn(3, 8))
    assert list(tmp_path.iterdir()) == []


def test_torch_parity_is_exact_for_large_float32() -> None:
    """The coordinate sum of large float32 points rounds; the parity must not."""
    x = torch.tensor([[2.0**24 - 1, 2.0**24 - 1, 1.0, 0.4]], dtype=torch.float32)
    y = fast._decode_dn_torch(x)
    assert int(torch.remainder(y.double(), 2).sum()) % 2 == 0
    assert torch.equal(y, torch.tensor([[2.0**24 - 1, 2.0**24 - 1, 1.0, 1.0]]))


@needs_cc
@pytest.mark.parametrize("dtype", DTYPES)
def test_portable_build_equals_torch(dtype: torch.dtype, tmp_path, monkeypatch) -> None:
    """The plain ``-O3`` build (scalar code on x86-64 without AVX2) gives the same points."""
    monkeypatch.setattr(_cfast, "_KERNELS", [])
    monkeypatch.setattr(_cfast, "_FLAGS", (["-O3", "-ffp-contract=off"],))
    monkeypatch.setenv("LLVQ_CACHE", str(tmp_path))
    monkeypatch.delenv("LLVQ_NO_CKERNEL", raising=False)
    assert _cfast.kernels() is not None
    for n in (3, 8, 24):
        for x in _cases(n, dtype, 7 * n)[::2]:
            assert torch.equal(_cfast.decode_dn(x), fast._decode_dn_torch(x))
            if n % 2 == 0:
                assert torch.equal(_cfast.decode_dn_plus(x), _torch_dn_plus(n)(x))


def test_portable_build_compiles_warning_free(fresh_kernel, monkeypatch) -> None:
    """The fallback build (no -march=native) compiles and gives the torch decoders' points."""
    import shutil

    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    monkeypatch.setattr(_cfast, "_FLAGS", (["-O3", "-ffp-contract=off", "-Wall", "-Werror"],))
    fresh_kernel(_cfast, "_KERNELS")
    assert _cfast.kernels() is not None
    x = torch.randn(300, 8) * 3
    assert torch.equal(get_lattice("E8").closest_point(x), _torch_dn_plus(8)(x))

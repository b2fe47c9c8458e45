"""Quantizer edge cases for every registered name: empty batches, other dtypes, huge latents,
2-D input, an EMA codebook fed Inf/NaN or overflowing latents, negative loss weights.

The empty-batch and dtype rules are part of the contract checker (``llvq.testing``); the rest
are checked here directly. Every test builds through the registry, so a new quantizer is
covered without touching this file.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from llvq.quantizers import build, list_quantizers
from llvq.quantizers.base import MAX_CODE
from llvq.quantizers.registry import QUANTIZERS
from llvq.testing import check_quantizer, latents
from tests.quantizers.test_contract import NOT_IDENTITY

NAMES = [n for n in list_quantizers() if QUANTIZERS.get(n).__module__.startswith("llvq.")]
MODE = {n: "any" if n in NOT_IDENTITY else "exact" for n in NAMES}
DTYPES = (torch.float16, torch.bfloat16, torch.float64)
#: quantizers whose codes are unbounded lattice coordinates (int64 could overflow)
UNBOUNDED = [n for n in NAMES if build(n, dim=16).codebook_size is None
             and build(n, dim=16).integer_codes]


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_gives_empty_output_and_a_finite_loss(name: str) -> None:
    """Not a NaN loss (0/0 of a mean over nothing), not a ZeroDivisionError."""
    check_quantizer(build(name, dim=16), straight_through=MODE[name], empty_batch=True)
    q = build(name, dim=16)
    out = q(torch.zeros(0, 16))
    assert out.z_q.shape == (0, 16) and float(out.loss.detach()) == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_half_bfloat16_and_float64_latents(name: str) -> None:
    """Cast inside, ``z_q`` in the input's dtype (or a clear error naming the dtype)."""
    check_quantizer(build(name, dim=16), straight_through=MODE[name], dtypes=DTYPES)
    q = build(name, dim=16)
    for dtype in DTYPES:
        z = latents(16).to(dtype).requires_grad_(True)
        out = q(z)
        assert out.z_q.dtype == dtype and bool(torch.isfinite(out.loss))
        out.z_q.float().sum().backward()
        assert z.grad is not None and z.grad.dtype == dtype


def test_unbounded_lattice_codes_are_found() -> None:
    assert {"llvq", "lattice", "e8", "zn"} <= set(UNBOUNDED)


@pytest.mark.parametrize("name", UNBOUNDED)
def test_codes_that_would_overflow_int64_raise(name: str) -> None:
    """1e30 would silently become int64's minimum (or a wrong point); now a clear error."""
    q = build(name, dim=16)
    who = q.inner.name if name == "projected" else name  # the inner lattice raises it
    huge = torch.full((2, 16), 1e30)
    for call in (q, q.encode, q.eval()):
        with pytest.raises(ValueError, match=rf"'{who}'.*lattice coordinates.*2\^53"):
            call(huge)
    ok = torch.full((2, 16), float(MAX_CODE) / 1e6)  # large but exact: accepted
    assert q.encode(ok).dtype == torch.int64


@pytest.mark.parametrize("name", NAMES)
def test_two_dimensional_input_keeps_its_shape(name: str) -> None:
    q = build(name, dim=16).eval()
    z = latents(16, (5,))
    out = q(z)
    assert out.z_q.shape == (5, 16)
    assert tuple(out.codes.shape) == tuple(q.code_shape((5,)))
    torch.testing.assert_close(q.decode(q.encode(z)).to(z.dtype), out.z_q)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_ema_codebook_never_absorbs_non_finite_input(bad: float) -> None:
    q = build("vq_ema", dim=4, codebook_size=8).train()
    q(latents(4, (64,)))  # k-means start and one EMA update
    before = {k: v.clone() for k, v in q.state_dict().items()}
    z = latents(4, (64,))
    z[3, 1] = bad
    with pytest.raises(ValueError, match="non-finite"):
        q(z)
    for key, value in q.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_ema_codebook_refuses_sums_that_overflow_and_stays_unchanged() -> None:
    """Finite latents near float32's maximum overflow the running sums: an error, codebook kept."""
    q = build("vq_ema", dim=4, codebook_size=2, kmeans_init=False).train()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    with pytest.raises(ValueError, match="vq_ema.*overflowed.*left unchanged"):
        q(torch.full((64, 4), 3e38))
    for key, value in q.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert bool(torch.isfinite(q.codebook).all())

    fresh = build("vq_ema", dim=4, codebook_size=2).train()  # k-means start on such latents
    with pytest.raises(ValueError, match="k-means start overflowed"):
        fresh(torch.full((64, 4), 3e38))
    assert not bool(fresh.initialized) and bool(torch.isfinite(fresh.codebook).all())


@pytest.mark.parametrize("name", [n for n in NAMES
                                  if "beta" in inspect.signature(QUANTIZERS.get(n)).parameters
                                  or n in ("e8", "dn", "an", "zn")])
def test_negative_beta_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=rf"quantizer '{name}': `beta` must be a finite number "
                                         r">= 0 \(model.quantizer.beta\), got -1"):
        build(name, dim=16, beta=-1.0)

"""The quantizer contract (DESIGN.md), checked for every name in the registry."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from llvq.quantizers import REGISTRY, QuantizerOutput, build, list_quantizers
from tests.conftest import CONFIG_DIR

NAMES = list_quantizers()


def _latents(dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 4, dim, generator=g) * 2.0  # (B, h, w, D)


@pytest.mark.parametrize("dim", [16, 64])
@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_and_codes(name: str, dim: int) -> None:
    q = build(name, dim=dim)
    z = _latents(dim)
    out = q(z)
    assert isinstance(out, QuantizerOutput)
    assert out.z_q.shape == z.shape and out.z_q.dtype == z.dtype
    assert out.codes.shape == q.code_shape(tuple(z.shape[:-1]))
    if q.integer_codes:
        assert not out.codes.is_floating_point() and out.codes.dtype == torch.int64
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    for key, value in out.metrics.items():
        assert isinstance(value, torch.Tensor) and value.ndim == 0, key


@pytest.mark.parametrize("name", NAMES)
def test_straight_through_gradient_reaches_input(name: str) -> None:
    q = build(name, dim=16)
    z = _latents(16).requires_grad_(True)
    out = q(z)
    weights = torch.randn_like(z)
    (out.z_q * weights).sum().backward()
    assert z.grad is not None
    # straight-through: d(z_q)/dz is the identity, plus the quantizer's own loss (none here)
    assert_close(z.grad, weights)


@pytest.mark.parametrize("name", NAMES)
def test_decode_encode_matches_forward_in_eval(name: str) -> None:
    q = build(name, dim=16).eval()
    z = _latents(16, seed=1)
    with torch.no_grad():
        z_q = q(z).z_q
    codes = q.encode(z)
    assert_close(q.decode(codes), z_q)
    assert torch.equal(q.encode(z), codes)  # deterministic


@pytest.mark.parametrize("name", NAMES)
def test_quantizer_loss_is_differentiable(name: str) -> None:
    q = build(name, dim=16)
    z = _latents(16).requires_grad_(True)
    out = q(z)
    if out.loss.requires_grad:
        out.loss.backward()
        assert z.grad is not None or any(p.grad is not None for p in q.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_rejects_non_finite_and_wrong_width(name: str) -> None:
    q = build(name, dim=16)
    z = _latents(16)
    z[0, 0, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        q(z)
    with pytest.raises(ValueError, match="dim=16"):
        q(_latents(8))


def test_registry_and_configs_match() -> None:
    configs = {p.stem for p in (CONFIG_DIR / "model" / "quantizer").glob("*.yaml")}
    assert configs == set(REGISTRY), (
        f"configs without a quantizer: {sorted(configs - set(REGISTRY))}; "
        f"quantizers without a config: {sorted(set(REGISTRY) - configs)}")


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="known quantizers: .*llvq"):
        build("no_such_quantizer", dim=4)


def test_list_quantizers_pattern() -> None:
    assert list_quantizers("vq*") == ["vq", "vq_ema"]

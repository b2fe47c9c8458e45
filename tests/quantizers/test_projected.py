"""``projected``: any quantizer on a learned projection; the inner's codes, rate and errors."""

from __future__ import annotations

import pytest
import torch

from llvq.quantizers import build
from llvq.testing import check_quantizer, latents


@pytest.mark.parametrize("inner", [
    {"name": "e8", "beta": 0.0},
    {"name": "zn", "scale": 0.5},
    {"name": "vq", "codebook_size": 16},
    {"name": "bounded_lattice", "lattice": "A2", "rate": 2.0, "dither": "none"},
])
def test_contract_with_inner_quantizers(inner: dict) -> None:
    k = 2 if inner.get("lattice") == "A2" else 8
    q = build("projected", dim=32, inner=inner, project_dim=k)
    check_quantizer(q, straight_through="any", empty_batch=True)


def test_codes_and_rate_are_the_inner_quantizers() -> None:
    q = build("projected", dim=64, inner={"name": "vq", "codebook_size": 16}, project_dim=8)
    assert not q.vector_codes and q.codebook_size == 16 and q.bits_per_vector == 4.0
    z = latents(64)
    codes = q.eval().encode(z)
    assert codes.shape == z.shape[:-1] and codes.dtype == torch.int64
    lat = build("projected", dim=64, inner="e8", project_dim=16).eval()
    codes = lat.encode(z)
    assert lat.vector_codes and codes.shape == (*z.shape[:-1], 16)
    assert lat.codebook_size is None and lat.bits_per_vector is None and lat.block == 8
    assert lat.code_shape((5,)) == (5, 16)
    # the codes are exactly the inner quantizer's codes of the projected latents
    assert torch.equal(codes, lat.inner.encode(lat.proj_in(z)))
    torch.testing.assert_close(lat.decode(codes), lat(z).z_q)


def test_gradient_reaches_both_projections_and_the_latents() -> None:
    q = build("projected", dim=16, inner={"name": "e8", "beta": 0.0}, project_dim=8).train()
    z = (3 * latents(16)).requires_grad_(True)
    out = q(z)
    (out.z_q.square().sum() + out.loss).backward()
    assert z.grad.abs().sum() > 0
    assert q.proj_in.weight.grad.abs().sum() > 0 and q.proj_out.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", ["cube", "ball"])
def test_bound_keeps_the_projection_inside_and_passes_the_contract(shape: str) -> None:
    q = build("projected", dim=32, inner={"name": "e8", "beta": 0.0}, project_dim=8, bound=1.5,
              bound_shape=shape, bias=False)
    check_quantizer(q, straight_through="any", empty_batch=True)
    with torch.no_grad():
        y = q._project(100 * latents(32))
    size = y.abs().amax(-1) if shape == "cube" else y.norm(dim=-1)
    assert 1.4 < float(size.max()) <= 1.5 * (1 + 1e-6)  # squashed into the bound
    small = 1e-3 * latents(32)  # near the origin the squashing is linear: bound * y
    torch.testing.assert_close(q._project(small), 1.5 * q.proj_in(small), rtol=1e-4, atol=1e-9)
    codes = q.eval().encode(latents(32))  # a finite code: the lattice points in the bound
    pts = q.inner.decode(codes)
    assert float(pts.abs().amax()) <= 2.5


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="bound must be positive"):
        build("projected", dim=16, bound=0.0)
    with pytest.raises(ValueError, match="bound_shape must be"):
        build("projected", dim=16, bound=1.0, bound_shape="sphere")
    with pytest.raises(ValueError, match="project_dim must be a positive integer"):
        build("projected", dim=16, project_dim=0)
    with pytest.raises(ValueError, match="inner needs a `name`"):
        build("projected", dim=16, inner={"scale": 1.0})
    with pytest.raises(ValueError, match="inner.dim"):
        build("projected", dim=16, inner={"name": "e8", "dim": 8})
    with pytest.raises(ValueError, match="known quantizers"):
        build("projected", dim=16, inner="no_such_quantizer")
    with pytest.raises(ValueError, match="multiple of"):  # the inner's own error: 8 is E8's block
        build("projected", dim=16, inner="e8", project_dim=6)

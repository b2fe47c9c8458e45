"""The lattice bottlenecks: codes, straight-through, learnable parts, dither, bounds, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llvq.lattices import get_lattice, save_generator
from llvq.quantizers import build


def _z(dim: int, seed: int = 0, spread: float = 2.0) -> torch.Tensor:
    return torch.randn(4, 5, dim, generator=torch.Generator().manual_seed(seed)) * spread


@pytest.mark.parametrize("name", ["e8", "dn", "an", "zn", "lattice"])
def test_codes_are_lattice_coordinates(name: str) -> None:
    q = build(name, dim=16).eval()
    z = _z(16)
    out = q(z)
    n = q.n
    lat = q.lattice
    blocks = z.double().unflatten(-1, (16 // n, n))
    expected = lat.closest_point(blocks)  # scale is 1 at init
    assert torch.allclose(out.z_q.double(), expected.flatten(-2), atol=1e-5)
    assert torch.equal(lat.coordinates(expected).flatten(-2), out.codes)


def test_shortcut_defaults() -> None:
    assert build("dn", dim=64).lattice.name == "D8"
    assert build("an", dim=12).lattice.name == "A12"
    assert build("zn", dim=16, n=4).lattice.name == "Z4"
    assert build("lattice", dim=16).lattice.name == "E8"


def test_learnable_generator_and_scale_get_gradient() -> None:
    q = build("lattice", dim=16, lattice="D4", learnable=True)
    assert q.decoder == "exact"
    z = _z(16).requires_grad_(True)
    out = q(z)
    out.loss.backward()
    assert q.log_map.grad is not None and q.log_map.grad.abs().sum() > 0
    assert q.log_scale.grad is not None and z.grad is not None
    with torch.no_grad():
        q.log_map.normal_(std=0.1)
    q.eval()
    z2 = _z(16, seed=3)
    assert torch.allclose(q.decode(q.encode(z2)), q(z2).z_q, atol=1e-5)


def test_dither_is_deterministic_in_eval_and_subtractive() -> None:
    q = build("e8", dim=64, dither=True, seed=7).eval()
    z = _z(64)
    codes = q.encode(z)
    assert torch.equal(codes, q.encode(z))
    assert torch.allclose(q.decode(codes), q(z).z_q, atol=1e-5)
    plain = build("e8", dim=64).eval()
    assert not torch.equal(codes, plain.encode(z))
    q.train()
    first, second = q(z).codes, q(z).codes  # a fresh dither every training step
    assert not torch.equal(first, second)


def test_bounded_codes_and_overload_metric() -> None:
    q = build("e8", dim=16, radius=2.0).eval()
    z = _z(16, spread=3.0)
    out = q(z)
    assert 0 < float(out.metrics["overload"]) <= 1
    pts = out.codes.unflatten(-1, (2, 8)).double() @ q.lattice.generator
    assert float(pts.norm(dim=-1).max()) <= 2.0 + 1e-9
    assert torch.allclose(q.decode(out.codes), out.z_q, atol=1e-5)


@pytest.mark.parametrize("decoder", ["exact", "babai", "nearest_plane"])
def test_generator_file_quantizes_like_the_named_lattice(tmp_path: Path, decoder: str) -> None:
    path = tmp_path / "d4.safetensors"
    save_generator(get_lattice("D4"), path)
    a = build("lattice", dim=16, generator=str(path), decoder=decoder).eval()
    b = build("lattice", dim=16, lattice="D4", decoder=decoder).eval()
    z = _z(16)
    assert torch.equal(a.encode(z), b.encode(z))
    assert torch.equal(a(z).z_q, b(z).z_q)


def test_bad_settings_raise_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dim=12 is not divisible.*E8"):
        build("e8", dim=12)
    with pytest.raises(ValueError, match="unknown lattice 'E9'.*known lattices"):
        build("lattice", dim=16, lattice="E9")
    with pytest.raises(ValueError, match="decoder='fast'"):
        build("lattice", dim=16, lattice="Lambda16", decoder="fast")
    with pytest.raises(ValueError, match="unknown decoder"):
        build("e8", dim=16, decoder="magic")
    save_file({"generator": torch.ones(4, 4)}, str(tmp_path / "sing.safetensors"))
    with pytest.raises(ValueError, match="singular"):
        build("lattice", dim=16, generator=str(tmp_path / "sing.safetensors"))
    save_file({"generator": torch.ones(4, 3)}, str(tmp_path / "rect.safetensors"))
    with pytest.raises(ValueError, match="square"):
        build("lattice", dim=16, generator=str(tmp_path / "rect.safetensors"))
    with pytest.raises(ValueError, match="non-finite"):
        build("e8", dim=16)(torch.full((2, 16), float("nan")))


def test_block_is_the_lattice_dimension() -> None:
    q = build("e8", dim=16)
    assert (q.block, q.blocks) == (8, 2) and q.product.lattice is q.lattice
    assert q.codebook_size is None and q.bits_per_vector is None  # unbounded
    assert build("dn", dim=12, n=4).block == 4

"""Point counting, overload probability and generator files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llvq.lattices import (
    closest_point,
    count_points,
    estimate_count,
    get_lattice,
    load_generator,
    load_lattice,
    overload_probability,
    save_generator,
)


def test_count_matches_volume_estimate_for_large_radius() -> None:
    exact = count_points("D4", 6.0)
    assert exact == pytest.approx(estimate_count("D4", 6.0), rel=0.05)
    assert count_points("Z2", 1.0) == 5  # origin and the four unit vectors


def test_overload_probability() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 8, generator=g, dtype=torch.float64)
    assert overload_probability("E8", x, radius=1e3) == 0.0
    p = overload_probability("E8", x, radius=2.0)
    y = get_lattice("E8").closest_point(x)
    assert p == pytest.approx(float((y.norm(dim=-1) > 2.0).double().mean()))
    assert overload_probability("E8", x, radius=2.0, scale=4.0) < p


def test_saved_generator_loads_and_quantizes_identically(tmp_path: Path) -> None:
    lat = get_lattice("E7")
    path = tmp_path / "e7.safetensors"
    save_generator(lat, path)
    assert torch.equal(load_generator(path), lat.generator)
    x = torch.randn(300, 7, dtype=torch.float64)
    assert torch.equal(load_lattice(path).closest_point(x), lat.closest_point(x))
    assert torch.equal(closest_point(load_generator(path), x), lat.closest_point(x))


def test_bad_generator_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_generator(tmp_path / "missing.safetensors")
    save_file({"weights": torch.eye(3)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="no tensor named 'generator'"):
        load_generator(tmp_path / "w.safetensors")
    save_file({"generator": torch.ones(3, 3)}, str(tmp_path / "s.safetensors"))
    with pytest.raises(ValueError, match="singular"):
        load_generator(tmp_path / "s.safetensors")

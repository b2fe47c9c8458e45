"""Incoherence processing: orthogonal seeded transforms, error invariance, exact export/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llvq.llm.incoherence import layer_seed, rotate, rotation, unrotate


@pytest.mark.parametrize("n", [1, 8, 9, 576, 96])
def test_rotation_is_orthogonal_and_seeded(n: int) -> None:
    t = rotation(n, 3)
    torch.testing.assert_close(t @ t.T, torch.eye(n, dtype=torch.float64), atol=1e-10, rtol=0)
    assert torch.equal(t, rotation(n, 3)) and (n == 1 or not torch.equal(t, rotation(n, 4)))


def test_rotation_spreads_an_outlier() -> None:
    w = torch.zeros(16, 64)
    w[3, 7] = 100.0
    w_r, _ = rotate(w, torch.eye(64), seed=0)
    assert float(w_r.abs().max()) < 100.0 / 16  # spread over all 16 x 64 entries


def test_output_error_is_invariant_and_unrotate_inverts() -> None:
    g = torch.Generator().manual_seed(0)
    w, d = torch.randn(24, 72, generator=g), 0.1 * torch.randn(24, 72, generator=g)
    x = torch.randn(200, 72, generator=g)
    h = x.T @ x
    w_r, h_r = rotate(w, h, 11)
    d_r, _ = rotate(d, h, 11)
    e, e_r = torch.trace(d @ h @ d.T), torch.trace(d_r @ h_r @ d_r.T)
    torch.testing.assert_close(e_r, e, rtol=1e-4, atol=0)
    torch.testing.assert_close(unrotate(w_r, 11), w, atol=1e-5, rtol=0)
    assert layer_seed("layers.0.q_proj") == layer_seed("layers.0.q_proj") != layer_seed("layers.1.q_proj")


def test_tiny_llama_with_incoherence_exports_and_loads_exactly(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from llvq.llm.io import load_quantized, read_manifest, save_quantized
    from llvq.llm.models import quantizable_linears
    from llvq.llm.ptq import layer_storage_bits
    from tests.llm.test_glvq import TINY, _quantized_tiny

    settings = TINY.__class__(**{**TINY.__dict__, "incoherence": True})
    model, tok, ptq = _quantized_tiny(2, settings)
    assert all(r.rotation_seed is not None for r in ptq.results.values())
    numel = sum(r.weight.numel() for r in ptq.results.values())
    assert sum(layer_storage_bits(r) for r in ptq.results.values()) / numel <= 2 + 1e-9
    save_quantized(tmp_path / "q", model, ptq.results, tok, settings.group_size)
    layers = read_manifest(tmp_path / "q")["layers"]
    assert all("rotation_seed" in meta for meta in layers.values())
    loaded, _ = load_quantized(tmp_path / "q")
    want = quantizable_linears(model)
    for name, lin in quantizable_linears(loaded).items():
        torch.testing.assert_close(lin.weight, want[name].weight, atol=1e-6, rtol=0)

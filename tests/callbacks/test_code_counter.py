"""CodeCounter and usage_stats against hand-made code tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from llvq.callbacks import CodeCounter, usage_stats


def test_index_codes_hand_counted() -> None:
    counter = CodeCounter(vector_codes=False, codebook_size=8)
    counter.update(torch.tensor([[0, 0], [1, 2]]))  # (B, h) indices
    counter.update(torch.tensor([[0, 0], [0, 3]]))
    rows, counts = counter.table()
    assert_close(rows, torch.tensor([[0], [1], [2], [3]]))
    assert_close(counts, torch.tensor([5, 1, 1, 1]))
    stats = counter.stats()
    p = torch.tensor([5, 1, 1, 1]) / 8
    entropy = float(-(p * p.log2()).sum())
    assert stats["vectors"] == 8 and stats["distinct"] == 4
    assert stats["entropy_bits"] == pytest.approx(entropy)
    assert stats["perplexity"] == pytest.approx(2**entropy)
    assert stats["dead_fraction"] == pytest.approx(0.5)


def test_lattice_vectors_are_counted_as_whole_rows() -> None:
    counter = CodeCounter(vector_codes=True)
    codes = torch.tensor([[[1, 2], [2, 1]], [[1, 2], [-1, 0]]])  # (B=2, h=2, D=2)
    counter.update(codes)
    counter.update(codes[:1])
    rows, counts = counter.table()
    assert_close(rows, torch.tensor([[-1, 0], [1, 2], [2, 1]]))
    assert_close(counts, torch.tensor([1, 3, 2]))
    assert "dead_fraction" not in counter.stats()  # a lattice has no finite codebook


def test_uniform_usage_entropy_and_perplexity() -> None:
    stats = usage_stats(torch.tensor([3, 3, 3, 3, 0, 0, 0, 0]), codebook_size=8)
    assert stats["entropy_bits"] == pytest.approx(2.0)
    assert stats["perplexity"] == pytest.approx(4.0)
    assert stats["distinct"] == 4 and stats["dead_fraction"] == pytest.approx(0.5)
    assert usage_stats(torch.tensor([7]))["entropy_bits"] == 0.0


def test_state_round_trip_and_reset() -> None:
    counter = CodeCounter(vector_codes=True)
    counter.update(torch.randint(-2, 3, (4, 3, 3, 5)))
    clone = CodeCounter(vector_codes=True)
    clone.load_state_dict(counter.state_dict())
    assert_close(clone.table(), counter.table())
    counter.reset()
    assert len(counter) == 0 and counter.stats()["vectors"] == 0


def test_large_lattice_count_is_exact() -> None:
    # 512 samples of 8×8 latents, 64 wide: the size of the default photos validation set
    codes = torch.randint(-1, 2, (512, 8, 8, 64))
    counter = CodeCounter(vector_codes=True)
    for chunk in codes.split(32):
        counter.update(chunk)
    expected = torch.unique(codes.reshape(-1, 64), dim=0).shape[0]
    assert len(counter) == expected
    assert counter.stats()["entropy_bits"] <= math.log2(codes[..., 0].numel())


def test_float_codes_are_refused() -> None:
    with pytest.raises(TypeError, match="integer codes"):
        CodeCounter(vector_codes=True).update(torch.zeros(2, 3))

"""vector-quantize-pytorch's quantizers through the plugin `bench/vqp_plugin.py` (issue 16).

Needs the `bench` extra (vector-quantize-pytorch); without it the module is skipped with that
reason, never passed silently.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("vector_quantize_pytorch",
                    reason="vector-quantize-pytorch (the `bench` extra) is not installed: the "
                           "vqp peer adapters of bench/vqp_plugin.py are not tested")

from llvq.plugins import load_plugins
from llvq.quantizers import build, list_quantizers
from llvq.testing import check_quantizer

BENCH = Path(__file__).resolve().parents[2] / "bench"

CASES = [
    ("vqp_vq", {"codebook_size": 16}, 4.0),
    ("vqp_fsq", {"levels": [5, 5, 5]}, 3 * 2.321928094887362),
    ("vqp_lfq", {"codebook_size": 16}, 4.0),
    ("vqp_rvq", {"codebook_size": 8, "num_quantizers": 2}, 6.0),
    ("vqp_simvq", {"codebook_size": 16}, 4.0),
]


@pytest.fixture(autouse=True)
def _plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    load_plugins(["vqp_plugin"])


def test_every_peer_is_registered() -> None:
    assert {c[0] for c in CASES} <= set(list_quantizers("vqp_*"))


@pytest.mark.parametrize("name, kwargs, bits", CASES, ids=[c[0] for c in CASES])
def test_peer_honours_the_contract(name: str, kwargs: dict, bits: float) -> None:
    torch.manual_seed(0)
    q = build(name, dim=16, **kwargs)
    check_quantizer(q, straight_through="any")
    assert q.bits_per_vector == pytest.approx(bits)


def test_rvq_codes_are_one_index_per_stage() -> None:
    q = build("vqp_rvq", dim=8, codebook_size=4, num_quantizers=3).eval()
    codes = q.encode(torch.randn(2, 5, 8))
    assert codes.shape == (2, 5, 3) and codes.dtype == torch.int64

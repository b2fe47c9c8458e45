"""The codes KV cache on the tiny random Llama: what attention reads, random access, generation,
memory, and the evaluation helpers of the kv_cache job."""

from __future__ import annotations

import json

import pytest
import torch

from llvq.kvcache import CodecCache, CodecLayer, build_codec
from llvq.kvcache.evaluate import attention_fidelity, cache_perplexity, capture_attention, memory
from llvq.llm.models import load_causal_lm
from llvq.quantizers import build

HEAD = 16  # tiny-llama: hidden 64, 4 query heads, 2 key/value heads, 2 layers


@pytest.fixture(scope="module")
def tiny():
    model, _ = load_causal_lm("tiny-llama", seed=0)
    return model


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_build_codec_sets_the_head_width_and_eval_mode() -> None:
    q = build_codec({"name": "fibquant", "bits": 2, "block": 4}, HEAD)
    assert q.dim == HEAD and not q.training
    with pytest.raises(ValueError, match="name"):
        build_codec({"bits": 2}, HEAD)
    with pytest.raises(ValueError, match="head"):
        build_codec(build("turbo_scalar", dim=8), HEAD)


def test_layer_returns_what_the_codes_hold_and_reads_any_position() -> None:
    q = build_codec({"name": "turbo_scalar", "bits": 2}, HEAD)
    layer = CodecLayer(q)
    g = torch.Generator().manual_seed(1)
    k1, v1 = torch.randn(2, 3, 5, HEAD, generator=g), torch.randn(2, 3, 5, HEAD, generator=g)
    k2, v2 = torch.randn(2, 3, 1, HEAD, generator=g), torch.randn(2, 3, 1, HEAD, generator=g)
    layer.update(k1, v1)
    keys, values = layer.update(k2, v2)
    assert keys.shape == (2, 3, 6, HEAD) and layer.get_seq_length() == 6
    torch.testing.assert_close(keys, q.decode(q.encode(torch.cat([k1, k2], 2))))
    torch.testing.assert_close(values, q.decode(q.encode(torch.cat([v1, v2], 2))))
    assert layer.key_codes.shape == (2, 3, 6, HEAD + 1)  # d level indices + the norm
    some_k, _ = layer.decode(torch.tensor([0, 4]))
    torch.testing.assert_close(some_k, keys[:, :, [0, 4]])
    layer.crop(-2)
    assert layer.get_seq_length() == 4
    layer.reorder_cache(torch.tensor([1, 0]))
    torch.testing.assert_close(layer.decode()[0], keys[[1, 0], :, :4])


def test_the_model_reads_the_compressed_cache(tiny) -> None:
    """A coarse codec changes the logits, a fine one almost does not: the cache is in use."""
    ids = _ids(2, 24)
    ref = tiny(ids, use_cache=False).logits
    coarse = build_codec({"name": "turbo_scalar", "bits": 1}, HEAD)
    fine = build_codec({"name": "turbo_scalar", "bits": 8, "norm_dtype": "float32"}, HEAD)
    out_coarse = tiny(ids, cache=CodecCache(coarse, tiny.config), use_cache=True).logits
    out_fine = tiny(ids, cache=CodecCache(fine, tiny.config), use_cache=True).logits
    err_coarse, err_fine = (out_coarse - ref).abs().max(), (out_fine - ref).abs().max()
    assert err_fine < 1e-2 < err_coarse
    assert err_fine < err_coarse / 10


def test_generate_appends_one_token_per_step(tiny) -> None:
    ids = _ids(1, 8, 2)
    q = build_codec({"name": "fibquant", "bits": 2, "block": 4}, HEAD)
    cache = CodecCache(q, tiny.config)
    out = tiny.generate(ids, cache=cache, use_cache=True, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 12)
    assert cache.get_seq_length() == 11  # the last token is generated, never cached
    vectors = 2 * 2 * 11  # layers x key/value heads x tokens
    assert cache.packed_bytes() == pytest.approx(vectors * 2 * q.bits_per_vector / 8)
    assert cache.fp16_bytes() == pytest.approx(vectors * 2 * HEAD * 2)


def test_memory_counts_norm_bits() -> None:
    q = build_codec({"name": "fibquant", "bits": 2, "block": 4}, 64)
    m = memory(q)
    assert m["bits_per_coordinate"] == pytest.approx(2 + 16 / 64)
    assert m["compression_vs_fp16"] == pytest.approx(16 / 2.25)


def test_fidelity_and_perplexity_improve_with_bits(tiny) -> None:
    ids = _ids(2, 32, 3)
    captured = capture_attention(tiny, ids)
    assert sorted(captured) == [0, 1]
    qs, ks, vs = captured[0]
    assert qs.shape == (2, 4, 32, HEAD) and ks.shape == vs.shape == (2, 2, 32, HEAD)
    low = attention_fidelity(captured, build_codec({"name": "turbo_scalar", "bits": 1}, HEAD))
    high = attention_fidelity(captured, build_codec({"name": "turbo_scalar", "bits": 4}, HEAD))
    assert low["cosine"] < high["cosine"] <= 1.0 + 1e-6
    assert high["key_rel_mse"] < low["key_rel_mse"]
    assert len(high["per_layer"]) == 2
    fp = cache_perplexity(tiny, ids, None)
    fine = cache_perplexity(tiny, ids, build_codec({"name": "turbo_scalar", "bits": 8}, HEAD))
    assert fine["ppl"] == pytest.approx(fp["ppl"], rel=1e-3)
    assert fp["tokens"] == 2 * 31


def test_kv_cache_job_writes_its_table(compose_cfg, tmp_path) -> None:
    from llvq.runner import run

    out = tmp_path / "kv.json"
    cfg = compose_cfg("experiment=kv_cache_tiny", "logger=csv", "callbacks=none",
                      f"model.results_file={out}",
                      "model.codecs=[{name: fibquant, bits: 1, block: 8},"
                      " {name: turbo_scalar, bits: 3}]")
    metrics = run(cfg)
    table = json.loads(out.read_text())
    assert set(table["codecs"]) == {"fibquant-b1-k8", "turbo_scalar-b3"}
    row = table["codecs"]["turbo_scalar-b3"]
    assert 0.5 < row["cosine"] <= 1.0 + 1e-6 and row["bits_per_coordinate"] == pytest.approx(4)
    assert "kv/fibquant-b1-k8/cosine" in metrics and "kv/fp/ppl" in metrics


def test_codes_wider_than_int32_are_kept_exactly() -> None:
    """turbo_lattice at 4 bits has 16^8 = 2^32 indices per E8 block: the cache must hold them."""
    q = build_codec({"name": "turbo_lattice", "bits": 4, "lattice": "E8"}, HEAD)
    layer = CodecLayer(q)
    g = torch.Generator().manual_seed(2)
    k, v = torch.randn(1, 2, 64, HEAD, generator=g), torch.randn(1, 2, 64, HEAD, generator=g)
    keys, _ = layer.update(k, v)
    assert int(q.encode(k)[..., :-1].max()) >= 2 ** 31  # the case that overflows int32
    torch.testing.assert_close(keys, q.decode(q.encode(k)))


def test_keys_only_and_values_only_cosines(tiny) -> None:
    captured = capture_attention(tiny, _ids(1, 32, 4))
    fid = attention_fidelity(captured, build_codec({"name": "turbo_scalar", "bits": 2}, HEAD))
    assert fid["cosine"] <= min(fid["cosine_keys_only"], fid["cosine_values_only"]) + 1e-3
    assert max(fid["cosine_keys_only"], fid["cosine_values_only"]) < 1.0

"""How well a KV-cache codec keeps a causal LM: attention-output fidelity, perplexity, memory.

Notation: ``W`` windows, ``T`` tokens per window, ``Hq`` query heads, ``H`` key/value heads,
``h`` head width.

- :func:`capture_attention` runs the full-precision model once and records, for every decoder
  layer, the queries, keys and values the attention reads (after RoPE), through a probe
  attention function registered with ``transformers.AttentionInterface``.
- :func:`attention_fidelity` replays each layer's attention with the keys and values passed
  through the codec and compares the attention outputs with the full-precision ones, per
  layer, in isolation (the queries are the full-precision ones): the mean cosine similarity of
  the ``(token, head)`` output vectors — the "attention cosine similarity" of FibQuant's
  frontier — and the relative squared error of the keys and values.
- :func:`cache_perplexity` scores text with the codec inside the model
  (:class:`~llvq.kvcache.cache.CodecCache`), so errors compound through the layers as in use.
- :func:`memory` is the packed size of the codes per token against a float16 cache.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llvq.kvcache.cache import CodecCache
from llvq.quantizers import Quantizer

__all__ = ["attention_fidelity", "cache_perplexity", "capture_attention", "memory"]

_PROBE = "llvq_kv_probe"
_RECORD: dict[int, list[tuple[Tensor, Tensor, Tensor]]] | None = None


def _probe(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
           attention_mask: Tensor | None, **kwargs: Any) -> tuple[Tensor, Any]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if _RECORD is not None:
        _RECORD.setdefault(int(module.layer_idx), []).append(
            (query.detach().float().cpu(), key.detach().float().cpu(), value.detach().float().cpu()))
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register_probe() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(_PROBE, _probe)
    ALL_MASK_ATTENTION_FUNCTIONS.register(_PROBE, sdpa_mask)


@torch.no_grad()
def capture_attention(model: nn.Module, windows: Tensor,
                      batch_size: int = 4) -> dict[int, tuple[Tensor, Tensor, Tensor]]:
    """Queries ``(W, Hq, T, h)``, keys and values ``(W, H, T, h)`` of every layer (float32, CPU).

    Args:
        model: a Hugging Face causal LM whose attention goes through ``AttentionInterface``.
        windows: ``(W, T)`` token ids.
        batch_size: windows per forward pass.
    """
    global _RECORD
    _register_probe()
    before = model.config._attn_implementation
    model.set_attn_implementation(_PROBE)
    _RECORD = {}
    try:
        for batch in windows.split(batch_size):
            model(batch, use_cache=False)
        record = _RECORD
    finally:
        _RECORD = None
        model.set_attn_implementation(before)
    return {i: tuple(torch.cat(parts, 0) for parts in zip(*chunks, strict=True))
            for i, chunks in sorted(record.items())}


def _attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (W, Hq, T, h)


@torch.no_grad()
def attention_fidelity(captured: dict[int, tuple[Tensor, Tensor, Tensor]],
                       quantizer: Quantizer, value_quantizer: Quantizer | None = None,
                       ) -> dict[str, Any]:
    """Per-layer attention outputs through the codec vs full precision (see the module docstring).

    Returns:
        ``{"cosine" (mean over layers, heads, tokens), "cosine_min_layer" (the worst layer's
        mean), "cosine_keys_only" / "cosine_values_only" (only the keys / only the values
        through the codec), "key_rel_mse", "value_rel_mse", "per_layer": [cosine, ...]}``.
    """
    vq = value_quantizer if value_quantizer is not None else quantizer
    cos, kcos, vcos, kerr, verr = [], [], [], [], []

    def cosine(out: Tensor, ref: Tensor) -> float:
        return float(F.cosine_similarity(out, ref, dim=-1).mean())

    for q, k, v in captured.values():
        kh = quantizer.decode(quantizer.encode(k))
        vh = vq.decode(vq.encode(v))
        ref = _attend(q, k, v)
        cos.append(cosine(_attend(q, kh, vh), ref))
        kcos.append(cosine(_attend(q, kh, v), ref))
        vcos.append(cosine(_attend(q, k, vh), ref))
        kerr.append(float((kh - k).pow(2).sum() / k.pow(2).sum()))
        verr.append(float((vh - v).pow(2).sum() / v.pow(2).sum()))

    def mean(x: list[float]) -> float:
        return sum(x) / len(x)

    return {"cosine": mean(cos), "cosine_min_layer": min(cos),
            "cosine_keys_only": mean(kcos), "cosine_values_only": mean(vcos),
            "key_rel_mse": mean(kerr), "value_rel_mse": mean(verr), "per_layer": cos}


@torch.no_grad()
def cache_perplexity(model: nn.Module, windows: Tensor, quantizer: Quantizer | None,
                     batch_size: int = 4) -> dict[str, float]:
    """Perplexity of ``windows (W, T)`` with every key and value read from a
    :class:`~llvq.kvcache.cache.CodecCache` of ``quantizer`` (``None``: the plain model).

    Each window is one forward pass over an empty cache; the model predicts tokens ``2..T``.
    """
    nll, count = 0.0, 0
    for batch in windows.split(batch_size):
        if quantizer is None:
            logits = model(batch, use_cache=False).logits
        else:
            logits = model(batch, cache=CodecCache(quantizer, model.config), use_cache=True).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                               batch[:, 1:].reshape(-1), reduction="sum")
        nll += float(loss)
        count += batch[:, 1:].numel()
    return {"ppl": math.exp(nll / count), "nll": nll / count, "tokens": float(count)}


def memory(quantizer: Quantizer, value_quantizer: Quantizer | None = None) -> dict[str, float]:
    """Packed bits per cached coordinate (keys and values averaged, norms included) and the
    compression against a float16 cache."""
    vq = value_quantizer if value_quantizer is not None else quantizer
    bits = (quantizer.bits_per_vector + vq.bits_per_vector) / (2 * quantizer.dim)
    return {"bits_per_coordinate": bits, "compression_vs_fp16": 16.0 / bits}

"""A Hugging Face KV cache that holds keys and values as codes of a registered quantizer.

Notation: ``B`` batch, ``H`` key/value heads, ``T`` cached tokens, ``h`` head width, ``c`` code
elements per head vector (``m + 1`` for ``fibquant``: ``m`` block indices and the norm).

:class:`CodecCache` is a ``transformers`` :class:`~transformers.cache_utils.Cache` made of one
:class:`CodecLayer` per decoder layer. ``update(k, v)`` encodes the new head vectors
``(B, H, t, h)`` with the quantizer (one shared quantizer: the same rotation and codebook for
every head and layer), appends the codes ``(B, H, t, c)`` along the token axis and returns the
decoded keys and values of every cached token, so attention reads only what the codes hold —
the prompt's tokens included (``model(ids, cache=CodecCache(...), use_cache=True)`` scores a
text as if all of it had been read back from the compressed cache). Every token's codes are
independent of the others (random access): :meth:`CodecLayer.decode` reads any positions, and
cropping, beam reordering and batch selection act on the codes exactly.

The codes are held as int32 tensors (int64 when a quantizer's indices need it); :meth:`CodecCache.packed_bytes` counts what a packed
store needs (``bits_per_vector`` of the quantizer per head vector, norms included), the figure
the memory results quote.

>>> cache = CodecCache(build_codec({"name": "fibquant", "bits": 2, "block": 4}, 64), config)
>>> out = model.generate(ids, cache=cache, use_cache=True, max_new_tokens=20)

(``use_cache=True`` matters for a model whose ``generation_config.use_cache`` is off: without
it ``generate`` re-feeds the whole sequence every step, appending it to the cache again.
:func:`llvq.llm.models.load_causal_lm` turns ``config.use_cache`` off, for forward passes, and
``generation_config.use_cache`` on.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicLayer

from llvq.quantizers import Quantizer, build

__all__ = ["CodecCache", "CodecLayer", "build_codec"]


def build_codec(spec: Mapping[str, Any] | Quantizer, head_dim: int) -> Quantizer:
    """A quantizer for head vectors of width ``head_dim``, in eval mode.

    Args:
        spec: a ready :class:`~llvq.quantizers.Quantizer` or ``{"name": <registry name>,
            **options}`` (``dim`` is set to ``head_dim``).
        head_dim: the attention head width.
    """
    if isinstance(spec, Quantizer):
        q = spec
    else:
        opts = {k: v for k, v in dict(spec).items() if k not in ("name", "dim", "_target_")}
        if "name" not in spec:
            raise ValueError(f"a KV-cache codec needs a quantizer `name`, got {dict(spec)}")
        q = build(str(spec["name"]), dim=head_dim, **opts)
    if q.dim != head_dim:
        raise ValueError(f"the KV-cache quantizer has dim={q.dim} but the model's heads are "
                         f"{head_dim} wide; build it with dim={head_dim}")
    return q.eval()


class CodecLayer(DynamicLayer):
    """One decoder layer's keys and values as quantizer codes ``(B, H, T, c)``.

    Args:
        key_quantizer: the quantizer of the keys (``dim`` = head width).
        value_quantizer: the quantizer of the values (default: the key quantizer).
    """

    is_croppable = True

    def __init__(self, key_quantizer: Quantizer, value_quantizer: Quantizer | None = None) -> None:
        super().__init__()
        self.key_quantizer = key_quantizer
        self.value_quantizer = value_quantizer if value_quantizer is not None else key_quantizer
        self.key_codes: Tensor | None = None
        self.value_codes: Tensor | None = None

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.dtype = key_states.dtype

    @staticmethod
    def _code_dtype(q: Quantizer) -> torch.dtype:
        """int32 when every code element fits (indices below 2^31, norms' 16/32-bit patterns),
        else int64 (e.g. ``turbo_lattice`` at 4 bits: ``16^8 = 2^32`` indices per block)."""
        size = q.codebook_size
        return torch.int32 if size is not None and size <= 2 ** 31 else torch.int64

    def _encode(self, q: Quantizer, x: Tensor) -> Tensor:
        return q.encode(x.float()).to(self._code_dtype(q))  # (B, H, t, c)

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any,
               **kwargs: Any) -> tuple[Tensor, Tensor]:
        """Encode and append ``(B, H, t, h)`` keys and values; return every cached token decoded."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        kc = self._encode(self.key_quantizer, key_states)
        vc = self._encode(self.value_quantizer, value_states)
        self.key_codes = kc if self.key_codes is None else torch.cat([self.key_codes, kc], -2)
        self.value_codes = vc if self.value_codes is None else torch.cat([self.value_codes, vc], -2)
        return self.decode()

    def decode(self, positions: Tensor | slice | None = None) -> tuple[Tensor, Tensor]:
        """Decoded keys and values ``(B, H, T', h)`` of ``positions`` (default: every token)."""
        if self.key_codes is None:
            raise RuntimeError("the cache layer is empty")
        sel = slice(None) if positions is None else positions
        kc, vc = self.key_codes[:, :, sel], self.value_codes[:, :, sel]
        keys = self.key_quantizer.decode(kc.long()).to(self.dtype)
        values = self.value_quantizer.decode(vc.long()).to(self.dtype)
        return keys, values

    def get_seq_length(self) -> int:
        return 0 if self.key_codes is None else int(self.key_codes.shape[-2])

    def packed_bits(self) -> float:
        """Bits a packed store of this layer needs (codes and norms of every head vector)."""
        if self.key_codes is None:
            return 0.0
        vectors = self.key_codes.shape[:-1].numel()  # B * H * T
        return vectors * (self.key_quantizer.bits_per_vector + self.value_quantizer.bits_per_vector)

    # -- cache operations act on the codes ------------------------------------------------
    def _map(self, fn: Any) -> None:
        if self.key_codes is not None:
            self.key_codes, self.value_codes = fn(self.key_codes), fn(self.value_codes)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if tokens_to_remove:
            self._map(lambda c: c[:, :, :tokens_to_remove])

    def reset(self) -> None:
        self.key_codes = self.value_codes = None
        super().reset()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda c: c.index_select(0, beam_idx.to(c.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda c: c.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        self._map(lambda c: c[indices])

    def offload(self) -> None:
        self._map(lambda c: c.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        if self.key_codes is not None and self.key_codes.device != self.device:
            self._map(lambda c: c.to(self.device, non_blocking=True))


class CodecCache(Cache):
    """A KV cache of quantizer codes, one :class:`CodecLayer` per decoder layer.

    Args:
        quantizer: the key (and value) quantizer, ``dim`` = the head width; see
            :func:`build_codec`.
        config: the model config (gives the number of layers); or pass ``num_layers``.
        value_quantizer: another quantizer for the values (default: ``quantizer``).
        num_layers: decoder layers, when no ``config`` is given.
    """

    def __init__(self, quantizer: Quantizer, config: Any = None,
                 value_quantizer: Quantizer | None = None, num_layers: int | None = None) -> None:
        if num_layers is None:
            if config is None:
                raise ValueError("CodecCache needs the model `config` or `num_layers`")
            num_layers = config.get_text_config(decoder=True).num_hidden_layers
        super().__init__(layers=[CodecLayer(quantizer, value_quantizer)
                                 for _ in range(int(num_layers))])

    def packed_bytes(self) -> float:
        """Bytes of a packed store of every layer's codes (keys and values, norms included)."""
        return sum(layer.packed_bits() for layer in self.layers) / 8

    def fp16_bytes(self) -> float:
        """Bytes the same tokens take in a float16 cache."""
        total = 0
        for layer in self.layers:
            if layer.key_codes is not None:
                total += 2 * layer.key_codes.shape[:-1].numel() * layer.key_quantizer.dim * 2
        return float(total)

"""KV-cache compression for Hugging Face causal LMs with llvq quantizers (FibQuant and baselines).

- :mod:`llvq.kvcache.cache`: :class:`CodecCache`, a ``transformers`` cache of quantizer codes;
- :mod:`llvq.kvcache.evaluate`: attention-output fidelity, perplexity and memory of a codec.
"""

from llvq.kvcache.cache import CodecCache, CodecLayer, build_codec

__all__ = ["CodecCache", "CodecLayer", "build_codec"]

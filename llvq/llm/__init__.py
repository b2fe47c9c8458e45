"""Grouped-lattice post-training quantization of language-model weights (GLVQ).

>>> from llvq.llm import load_quantized
>>> model, tokenizer = load_quantized("logs/glvq_smollm2/runs/<time>/quantized")

``transformers`` (the ``llm`` extra) is imported only when a model is loaded.
"""

from llvq.llm.glvq import GLVQSettings, LayerResult, allocate_bits, quantize_layer, rtn_quantize
from llvq.llm.io import load_quantized, save_quantized
from llvq.llm.models import load_causal_lm
from llvq.llm.ptq import BlockwisePTQ

__all__ = [
    "BlockwisePTQ",
    "GLVQSettings",
    "LayerResult",
    "allocate_bits",
    "load_causal_lm",
    "load_quantized",
    "quantize_layer",
    "rtn_quantize",
    "save_quantized",
]

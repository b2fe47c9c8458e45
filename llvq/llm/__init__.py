"""Grouped-lattice post-training quantization of language-model weights (GLVQ).

>>> from llvq.llm import load_quantized
>>> model, tokenizer = load_quantized("logs/glvq_smollm2/runs/<time>/quantized")

Modules: :mod:`~llvq.llm.settings` (the nested settings), :mod:`~llvq.llm.groups` (one layer
as a grouped problem: grouping, side information, initialisation, decoding),
:mod:`~llvq.llm.glvq` (the alternating optimisation), :mod:`~llvq.llm.allocation` (bit widths),
:mod:`~llvq.llm.baselines` (RTN, HQQ and the ``LLM_BASELINES`` registry),
:mod:`~llvq.llm.gptq` (GPTQ), :mod:`~llvq.llm.awq` (AWQ) and :mod:`~llvq.llm.e8p` (QuIP#'s E8P
codebook with BlockLDLQ), calibrated baselines,
:mod:`~llvq.llm.ptq`
(block by block, DDP), :mod:`~llvq.llm.io` (export), :mod:`~llvq.llm.packed` (``GLVQLinear``:
the packed layer of ``load_quantized(dir, packed=True)``), :mod:`~llvq.llm.eval` (perplexity).
``transformers`` (the ``llm`` extra) is imported only when a model is loaded.
"""

from llvq.llm.allocation import allocate_bits
from llvq.llm.awq import AWQBaseline, awq_quantize
from llvq.llm.baselines import LLM_BASELINES, BaselineOutput, apply_baseline, rtn_quantize
from llvq.llm.e8p import E8PBaseline, e8p_quantize
from llvq.llm.glvq import quantize_layer
from llvq.llm.gptq import GPTQBaseline, gptq_quantize
from llvq.llm.groups import LayerResult, dequantize
from llvq.llm.io import load_quantized, save_quantized
from llvq.llm.models import load_causal_lm
from llvq.llm.packed import GLVQLinear
from llvq.llm.ptq import BlockwisePTQ, quantize_with_baseline
from llvq.llm.settings import EvalSettings, GLVQSettings, LMSpec, PTQConfig

__all__ = [
    "LLM_BASELINES",
    "AWQBaseline",
    "BaselineOutput",
    "BlockwisePTQ",
    "E8PBaseline",
    "EvalSettings",
    "GLVQLinear",
    "GLVQSettings",
    "GPTQBaseline",
    "LMSpec",
    "LayerResult",
    "PTQConfig",
    "allocate_bits",
    "apply_baseline",
    "awq_quantize",
    "dequantize",
    "e8p_quantize",
    "gptq_quantize",
    "load_causal_lm",
    "load_quantized",
    "quantize_layer",
    "quantize_with_baseline",
    "rtn_quantize",
    "save_quantized",
]

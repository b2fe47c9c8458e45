"""Peer post-training quantizers for the LLM benchmark (HQQ by default), by registry name.

``baseline_quantize(model, name, nbits, group_size)`` quantizes every ``nn.Linear`` inside the
decoder blocks (the same layers GLVQ quantizes; embeddings and the output head stay in full
precision) with the baseline ``name`` of :data:`llvq.llm.baselines.LLM_BASELINES` (``hqq``,
``rtn`` or one a plugin registered) and writes its dequantized weights in place, so the model
runs in plain PyTorch with exactly the baseline's weights. ``hqq_quantize`` is the HQQ case.

Bits per weight count what the baseline stores. For HQQ: the packed codes (3-bit packs ten
codes into each int32, so 3.2 bits per code plus row padding) and one scale and one zero per
group in their stored dtype. With compute dtype float32 those are float32, i.e.
64 / group_size extra bits per weight; ``bits_per_weight_fp16_meta`` gives the figure for HQQ's
default float16 metadata (``nbits + 32 / group_size`` up to packing), the one usually quoted.

Run ``python bench/llm_peers.py`` for a quick check on tiny-llama (add ``--smollm2``;
``--baseline rtn`` for another registered baseline). HQQ needs ``pip install hqq``.
"""

from __future__ import annotations

import argparse
import time

from torch import nn

from llvq.llm.baselines import LLM_BASELINES, apply_baseline
from llvq.llm.models import decoder_blocks, quantizable_linears

__all__ = ["baseline_quantize", "hqq_quantize"]


def baseline_quantize(model: nn.Module, name: str, nbits: int,
                      group_size: int) -> dict[str, float | int | str]:
    """Quantize every linear layer of ``model``'s decoder blocks with a registered baseline.

    Args:
        model: a causal LM on CPU (float32), e.g. from :func:`llvq.llm.models.load_causal_lm`.
        name: an :data:`~llvq.llm.baselines.LLM_BASELINES` name (``hqq``, ``rtn``, ...).
        nbits: code bits.
        group_size: weights per scale/zero group.

    Returns:
        ``{"bits_per_weight", ... (the baseline's other bit counts), "code_bits", "group_size",
        "seconds", "layers", "weights", "backend"}``; ``backend`` is ``"dequantized"`` (the
        layers stay ``nn.Linear`` holding the baseline's dequantized weights).
    """
    decoder_blocks(model)  # clear error when the model has no blocks
    linears = quantizable_linears(model)
    baseline = LLM_BASELINES.build(name, bits=nbits, group_size=group_size)
    start = time.perf_counter()
    info = apply_baseline(linears, baseline)
    weights = int(info.pop("weights"))
    return {**info, "code_bits": nbits, "group_size": group_size,
            "seconds": time.perf_counter() - start, "layers": len(linears), "weights": weights,
            "backend": "dequantized"}


def hqq_quantize(model: nn.Module, nbits: int, group_size: int) -> dict[str, float | int | str]:
    """:func:`baseline_quantize` with HQQ (``nbits`` in 1, 2, 3, 4, 8); needs ``hqq``."""
    return baseline_quantize(model, "hqq", nbits, group_size)


def main() -> None:
    """Quantize tiny-llama (and optionally SmolLM2) with a baseline; print perplexity and timing."""
    from llvq.data.text import TextDataModule
    from llvq.llm.eval import perplexity
    from llvq.llm.models import load_causal_lm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2", action="store_true", help="also SmolLM2 at 2 bits, group 64")
    parser.add_argument("--baseline", default="hqq", help="an LLM_BASELINES name")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    args = parser.parse_args()
    runs = [("tiny-llama", 2, 32), ("tiny-llama", 3, 32)]
    if args.smollm2:
        runs.append(("smollm2", 2, 64))
    for name, nbits, group in runs:
        t0 = time.perf_counter()
        model, tok = load_causal_lm(name)
        load_s = time.perf_counter() - t0
        text = TextDataModule(eval_tokens=args.eval_tokens, seq_len=512)
        tokens = text.evaluation_tokens(tok)
        before = perplexity(model, tokens, seq_len=512, progress=False)["ppl"]
        info = baseline_quantize(model, args.baseline, nbits, group)
        after = perplexity(model, tokens, seq_len=512, progress=False)["ppl"]
        print(f"{name} load {load_s:.1f}s  ppl {before:.2f} -> {after:.2f}  {info}")


if __name__ == "__main__":
    main()

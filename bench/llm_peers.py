"""Peer post-training quantizers for the LLM benchmark: HQQ (half-quadratic, calibration-free).

``hqq_quantize(model, nbits, group_size)`` replaces every ``nn.Linear`` inside the decoder
blocks (the same layers GLVQ quantizes; embeddings and the output head stay in full precision)
by HQQ's ``HQQLinear`` on CPU with compute dtype float32. When HQQ's own forward fails on this
machine, the layer falls back to a plain ``nn.Linear`` holding HQQ's dequantized weight, so the
model still runs in plain PyTorch with exactly HQQ's weights.

Bits per weight count what HQQ stores: the packed codes (3-bit packs ten codes into each int32,
so 3.2 bits per code plus row padding) and one scale and one zero per group in their stored
dtype. With compute dtype float32 those are float32, i.e. 64 / group_size extra bits per weight;
``bits_per_weight_fp16_meta`` gives the figure for HQQ's default float16 metadata
(``nbits + 32 / group_size`` up to packing), the one usually quoted.

Run ``python bench/llm_peers.py`` for a quick check on tiny-llama (add ``--smollm2``).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from llvq.llm.models import decoder_blocks, quantizable_linears

__all__ = ["hqq_quantize"]


def _tensor_bits(t: object) -> int:
    return t.numel() * t.element_size() * 8 if isinstance(t, torch.Tensor) else 0


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _dequantized_linear(layer: nn.Module, linear: nn.Linear) -> nn.Linear:
    """A plain ``nn.Linear`` with HQQ's dequantized weight and the original bias."""
    out = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        out.weight.copy_(layer.dequantize().reshape(linear.weight.shape).to(torch.float32))
        if linear.bias is not None:
            out.bias.copy_(linear.bias.float())
    return out.to(linear.weight.dtype)


def hqq_quantize(model: nn.Module, nbits: int, group_size: int) -> dict[str, float | int | str]:
    """Quantize every linear layer of ``model``'s decoder blocks with HQQ, in place, on CPU.

    Args:
        model: a causal LM on CPU (float32), e.g. from :func:`llvq.llm.models.load_causal_lm`.
        nbits: HQQ code bits (1, 2, 3, 4 or 8).
        group_size: weights per scale/zero group (along the input dimension); must divide
            each layer's ``in_features * out_features``.

    Returns:
        ``{"bits_per_weight", "bits_per_weight_fp16_meta", "code_bits", "group_size",
        "seconds", "layers", "weights", "backend"}``; ``backend`` is ``"hqq"`` when HQQ's
        own CPU forward ran, ``"dequantized"`` when the layers fell back to plain
        ``nn.Linear`` with HQQ's dequantized weights.
    """
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    decoder_blocks(model)  # clear error when the model has no blocks
    linears = quantizable_linears(model)
    config = BaseQuantizeConfig(nbits=nbits, group_size=group_size)
    start = time.perf_counter()
    stored_bits = fp16_meta_bits = weights = 0
    fallback = False
    for name, linear in linears.items():
        layer = HQQLinear(linear, config, del_orig=False, compute_dtype=torch.float32, device="cpu")
        code_bits = _tensor_bits(layer.W_q)
        meta_bits = sum(_tensor_bits(layer.meta.get(k)) for k in ("scale", "zero"))
        meta_count = sum(
            layer.meta[k].numel() for k in ("scale", "zero") if torch.is_tensor(layer.meta.get(k))
        )
        stored_bits += code_bits + meta_bits
        fp16_meta_bits += code_bits + 16 * meta_count
        weights += linear.weight.numel()
        replacement: nn.Module = layer
        if not fallback:
            try:
                with torch.no_grad():
                    x = torch.randn(2, linear.in_features)
                    y = layer(x)
                if y.shape != (2, linear.out_features) or not torch.isfinite(y).all():
                    raise RuntimeError(f"bad HQQ forward output {tuple(y.shape)}")
            except Exception as err:  # noqa: BLE001 - any backend failure: use the weights
                print(
                    f"[llm_peers] HQQ forward failed on CPU ({type(err).__name__}: {err}); "
                    "falling back to dequantized nn.Linear weights"
                )
                fallback = True
        if fallback:
            replacement = _dequantized_linear(layer, linear)
        _set_module(model, name, replacement)
    seconds = time.perf_counter() - start
    return {
        "bits_per_weight": stored_bits / weights,
        "bits_per_weight_fp16_meta": fp16_meta_bits / weights,
        "code_bits": nbits,
        "group_size": group_size,
        "seconds": seconds,
        "layers": len(linears),
        "weights": weights,
        "backend": "dequantized" if fallback else "hqq",
    }


def main() -> None:
    """Quantize tiny-llama (and optionally SmolLM2) with HQQ and print perplexity and timing."""
    from llvq.data.text import TextDataModule
    from llvq.llm.eval import perplexity
    from llvq.llm.models import load_causal_lm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2", action="store_true", help="also SmolLM2 at 2 bits, group 64")
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
        info = hqq_quantize(model, nbits, group)
        after = perplexity(model, tokens, seq_len=512, progress=False)["ppl"]
        print(f"{name} load {load_s:.1f}s  ppl {before:.2f} -> {after:.2f}  {info}")


if __name__ == "__main__":
    main()

"""Packed GLVQ models: resident memory and greedy-generation speed against the float32 model.

    python train.py experiment=glvq_smollm2 model.bits=2 model.tune.steps=0 model.glvq.vector_feedback=false model.export_dir=exports/smollm2-glvq2
    python train.py experiment=glvq_smollm2 model.bits=4 model.tune.steps=0 model.glvq.vector_feedback=false model.export_dir=exports/smollm2-glvq4
    python bench/llm_packed.py --export exports/smollm2-glvq2 exports/smollm2-glvq4

For each export (``llvq.llm.io.save_quantized``) and for the float32 model it came from:

* **memory**: each model is loaded in a fresh subprocess (``--measure``), which reports its
  resident set size after loading it and running it on 8 tokens (so that memory-mapped
  weights are resident) minus the one before (imports done and a tiny Llama built
  and run once, so library start-up is not counted; freed heap memory is handed back with
  glibc's ``malloc_trim`` before each reading), and the bytes of the
  model's parameters and buffers. ``packed`` is ``load_quantized(dir, packed=True)`` (codes
  kept at their bit widths, :class:`llvq.llm.packed.GLVQLinear`); ``dequantized`` is
  ``load_quantized(dir)`` (float32 weights); ``packed-int8`` is packed with
  ``embeddings="int8"`` (the tied embedding table / output head as int8 rows, one scale per
  row), ``packed-int4`` with ``embeddings="int4"`` (4-bit codes in blocks of 32, a float16
  scale and minimum each); ``fp16`` is the float32 model cast to float16 (memory only).
* **speed**: in one process, the float32 model and the packed one generate ``--new-tokens``
  tokens greedily (``use_cache=True``) from the same prompts, taking turns ``--repeats`` times;
  tokens per second of each (median) and their ratio. The packed model's tokens are checked
  against the dequantized model's (they should be the same: same weights up to float rounding;
  for ``packed-int8`` and ``packed-int4``, against ``load_quantized(dir, embeddings=...)``).
* **perplexity** of the packed and the dequantized model on ``--eval-tokens`` held-out tokens.

Writes ``bench/results/llm_packed.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _report import machine_info, markdown_table, write_result

MODEL = ["smollm2"]
PACKED = {"float32": "packed", "int8": "packed-int8", "int4": "packed-int4"}  # embeddings -> variant


def _rss() -> int:
    """Resident set size of this process in bytes (Linux ``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (the memory figures need Linux)")


def _tensor_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


VARIANTS = ("fp32", "fp16", "dequantized", *PACKED.values())
EMBEDDINGS = {v: e for e, v in PACKED.items()}  # variant -> embeddings


def load(variant: str, export: str | None) -> torch.nn.Module:
    from llvq.llm.io import load_quantized
    from llvq.llm.models import load_causal_lm

    if variant in ("fp32", "fp16"):
        model, _ = load_causal_lm(MODEL[0], seed=0)
        if variant == "fp16":  # transformers refuses .half() on a GGUF-loaded model
            for t in model.parameters():
                t.data = t.data.half()
        return model
    model, _ = load_quantized(export, packed=variant.startswith("packed"),
                              embeddings=EMBEDDINGS.get(variant, "float32"))
    return model


def measure(variant: str, export: str | None) -> dict:
    """Memory of one model, loaded in this (fresh) process."""
    import transformers  # noqa: F401  (imports count as the baseline, not as the model)

    import llvq.llm.io
    import llvq.llm.packed  # noqa: F401
    from llvq.llm._cpacked import kernels
    from llvq.llm.models import load_causal_lm

    kernels()
    warm, _ = load_causal_lm("tiny-llama", seed=0)  # the same architecture: its modules imported
    with torch.inference_mode():
        warm(torch.zeros(1, 4, dtype=torch.int64))
    del warm
    gc.collect()
    _trim()
    before = _rss()
    model = load(variant, export)
    with torch.inference_mode():  # touch every weight (memory-mapped tensors load lazily)
        model(torch.arange(8)[None] + 100)
    gc.collect()
    _trim()
    after = _rss()
    from llvq.llm.packed import GLVQLinear, Int4Embedding, Int4Linear, Int8Embedding, Int8Linear

    layers = [m for m in model.modules() if isinstance(m, GLVQLinear)]
    tables = [m for m in model.modules()
              if isinstance(m, (Int8Embedding, Int8Linear, Int4Embedding, Int4Linear))]
    return {"variant": variant, "export": export, "rss_bytes": after - before,
            "tensor_bytes": _tensor_bytes(model),
            "packed_layer_bytes": sum(_tensor_bytes(m) for m in layers),
            "embedding_bytes": _tensor_bytes(torch.nn.ModuleList(tables)) if tables else
            _tensor_bytes(torch.nn.ModuleList([model.get_input_embeddings(),
                                               model.get_output_embeddings()]))}


def _trim() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``), so the resident size
    is what the model holds, not what loading it once needed."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _subprocess_measure(variant: str, export: str | None) -> dict:
    cmd = [sys.executable, __file__, "--model", MODEL[0], "--measure", variant]
    cmd += ["--export", export] if export else []
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    if out.returncode != 0:
        raise SystemExit(f"measuring {variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def generate_speed(models: dict[str, torch.nn.Module], prompts: torch.Tensor, new_tokens: int,
                   repeats: int) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """Tokens/s of greedy generation for each model, taking turns; the generated ids."""
    kw = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
          "use_cache": True, "pad_token_id": 0}
    rates: dict[str, list[float]] = {k: [] for k in models}
    ids: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for m in models.values():  # warm-up (kernel build, allocator)
            m.generate(prompts[:1, :8], **{**kw, "max_new_tokens": 2, "min_new_tokens": 2})
        for _ in range(repeats):
            for name, m in models.items():
                start = time.perf_counter()
                out = torch.cat([m.generate(p[None], **kw) for p in prompts])
                rates[name].append(prompts.shape[0] * new_tokens / (time.perf_counter() - start))
                ids[name] = out
    return rates, ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export", nargs="+", default=[], help="GLVQ export directories")
    p.add_argument("--model", default="smollm2", help="the model the exports were made from")
    p.add_argument("--measure", choices=VARIANTS,
                   help=argparse.SUPPRESS)  # internal: one model's memory, in a fresh process
    p.add_argument("--prompts", type=int, default=2, help="prompts (from the evaluation text)")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--name", default="llm_packed")
    args = p.parse_args()
    MODEL[0] = args.model
    if args.measure:
        print(json.dumps(measure(args.measure, args.export[0] if args.export else None)))
        return
    if not args.export:
        raise SystemExit("give --export DIR [DIR ...]: GLVQ exports of SmolLM2 (see the docstring "
                         "for the train.py commands that make them)")
    for d in args.export:
        if not (Path(d) / "manifest.json").is_file():
            raise SystemExit(f"--export {d}: not a GLVQ export (no manifest.json)")

    from llvq.data import TextDataModule
    from llvq.llm.eval import perplexity
    from llvq.llm.io import load_quantized, read_manifest
    from llvq.llm.models import load_causal_lm

    memory = [_subprocess_measure("fp32", None), _subprocess_measure("fp16", None)]
    fp32_bytes = memory[0]["rss_bytes"]
    fp, tok = load_causal_lm(MODEL[0], seed=0)
    text = TextDataModule(eval_tokens=max(args.eval_tokens, args.prompts * args.prompt_len))
    evaluation = text.evaluation_tokens(tok)
    prompts = evaluation[: args.prompts * args.prompt_len].reshape(args.prompts, args.prompt_len)
    rows = []
    for d in args.export:
        manifest = read_manifest(d)
        bits = manifest["size"]["bits_per_weight_file"]
        for variant in ("dequantized", *PACKED.values()):
            memory.append(_subprocess_measure(variant, d))
        models = {"fp32": fp, "dequantized": load_quantized(d)[0]}
        for emb, variant in PACKED.items():
            models[variant] = load_quantized(d, packed=True, embeddings=emb)[0]
        refs = {emb: load_quantized(d, embeddings=emb)[0]  # tokens check only
                for emb in PACKED if emb != "float32"}
        rates, ids = generate_speed(models, prompts, args.new_tokens, args.repeats)
        _, ids_ref = generate_speed(refs, prompts, args.new_tokens, 1)
        ids_ref["float32"] = ids["dequantized"]
        ev = evaluation[: args.eval_tokens]
        with torch.inference_mode():
            ppl = {k: perplexity(models[k], ev, seq_len=512, batch_size=4, progress=False)["ppl"]
                   for k in ("dequantized", *PACKED.values())}
        mem = {m["variant"]: m for m in memory if m["export"] == d}
        fp_rate = statistics.median(rates["fp32"])
        for emb, variant in PACKED.items():
            rate = statistics.median(rates[variant])
            rows.append({
                "export": d, "embeddings": emb, "bits_per_weight": round(bits, 3),
                "packed_rss_mb": round(mem[variant]["rss_bytes"] / 2**20, 1),
                "dequantized_rss_mb": round(mem["dequantized"]["rss_bytes"] / 2**20, 1),
                "fp32_rss_mb": round(fp32_bytes / 2**20, 1),
                "memory_vs_fp32": round(mem[variant]["rss_bytes"] / fp32_bytes, 3),
                "packed_tensor_mb": round(mem[variant]["tensor_bytes"] / 2**20, 1),
                "fp32_tensor_mb": round(memory[0]["tensor_bytes"] / 2**20, 1),
                "packed_layers_mb": round(mem[variant]["packed_layer_bytes"] / 2**20, 1),
                "embedding_mb": round(mem[variant]["embedding_bytes"] / 2**20, 1),
                "fp32_layers_mb": round(4 * sum(m["out_features"] * m["in_features"]
                                                for m in manifest["layers"].values()) / 2**20, 1),
                "fp32_tokens_per_s": round(fp_rate, 2), "packed_tokens_per_s": round(rate, 2),
                "dequantized_tokens_per_s": round(statistics.median(rates["dequantized"]), 2),
                "speed_vs_fp32": round(rate / fp_rate, 3),
                "rates": {k: rates[k] for k in ("fp32", "dequantized", variant)},
                "same_tokens_as_dequantized": bool(torch.equal(ids[variant], ids_ref[emb])),
                "ppl_packed": ppl[variant], "ppl_dequantized": ppl["dequantized"],
            })
            print(f"{d} ({emb} embeddings): {rows[-1]['memory_vs_fp32']:.3f} of fp32 memory, "
                  f"{rows[-1]['speed_vs_fp32']:.2f}x its tokens/s, ppl {ppl[variant]:.3f} "
                  f"(dequantized {ppl['dequantized']:.3f})")
        del models, refs
        gc.collect()
        write_result(args.name, {
            "machine": machine_info(), "model": MODEL[0], "memory": memory, "rows": rows,
            "prompts": args.prompts, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
            "repeats": args.repeats, "eval_tokens": args.eval_tokens})
    print(markdown_table(rows, ["export", "embeddings", "bits_per_weight", "packed_layers_mb",
                                "embedding_mb", "fp32_layers_mb",
                                "packed_tensor_mb", "fp32_tensor_mb", "packed_rss_mb",
                                "fp32_rss_mb", "memory_vs_fp32", "packed_tokens_per_s", "fp32_tokens_per_s",
                                "speed_vs_fp32", "ppl_packed", "ppl_dequantized"]))


if __name__ == "__main__":
    main()

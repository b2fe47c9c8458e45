"""Quantization-aware training vs post-training quantization on the digits CNN (StatQAT).

The `qat_digits` set-up (``llvq.modules.classifier.DigitsNet`` on scikit-learn's 8x8 digits,
AdamW 3e-3, batch 64, the fixed seeded 80/20 split) at INT4 and FP4 (E2M1), weights and inputs
of all four conv/linear layers, one scale per tensor. For each seed it trains:

- ``fp``: full precision, then **PTQ**: the trained weights quantized and the input scales
  calibrated on the training set (``llvq.qat.calibrate``), no further training;
- **QAT**: the same network trained from the same initialisation with fake quantization
  attached by the ``QuantizationAwareTraining`` callback, through the same Lightning trainer;

each with two parameter rules: ``statqat`` (weights: MSE grid search refitted every step;
inputs: the iterative Lloyd-style rule, running scale) — the experiment's defaults — and
``minmax`` (both min–max). Reported on the held-out 20 % (360 images; it is never used for
model selection: every run trains a fixed number of epochs): accuracy, the relative weight
error ``‖Q(W) − W‖² / ‖W‖²`` (mean over layers) and the input quantizers' measured and
expected (Gaussian model) MSE, mean ± sd over seeds.

    python bench/qat.py                       # 3 seeds x 20 epochs, ~10 min on 1 thread
    python bench/qat.py --seeds 0 --epochs 5  # a quick look

Writes bench/results/qat.json and bench/results/qat.png. 1 torch thread.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch.nn.utils import parametrize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, markdown_table, write_result

from llvq.data import DigitsDataModule
from llvq.modules.classifier import ClassifierModule
from llvq.qat import QuantizationAwareTraining, attach_fake_quant, calibrate, fake_quant_layers
from llvq.qat.fake_quant import quantization_metrics

FORMATS = {"int4": {"name": "statqat_int", "bits": 4}, "fp4": {"name": "statqat_fp",
                                                              "format": "e2m1"}}
RULES = {  # (weight fit, activation fit)
    "statqat": ("mse", "iterative"),
    "minmax": ("minmax", "minmax"),
}


def specs(fmt: str, rule: str) -> tuple[dict, dict]:
    wfit, afit = RULES[rule]
    return ({**FORMATS[fmt], "fit": wfit, "dynamic": True}, {**FORMATS[fmt], "fit": afit})


def data() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    return dm


def train(seed: int, epochs: int, qat: tuple[dict, dict] | None) -> ClassifierModule:
    L.seed_everything(seed, workers=True, verbose=False)
    model = ClassifierModule(lr=3e-3)
    callbacks = [QuantizationAwareTraining(weight=qat[0], activation=qat[1])] if qat else []
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=callbacks)
    trainer.fit(model, datamodule=data())
    return model


@torch.no_grad()
def evaluate(model: ClassifierModule) -> dict[str, float]:
    """Held-out accuracy and the quantization errors, with the model in eval mode."""
    model.eval()
    dm = data()
    correct = total = 0
    for x, y in dm.val_dataloader():
        correct += int((model(x).argmax(1) == y).sum())
        total += y.numel()
    out = {"acc": correct / total}
    layers = fake_quant_layers(model)
    if layers:
        rel = []
        for layer in layers.values():
            if parametrize.is_parametrized(layer, "weight"):
                w = layer.parametrizations.weight.original
                rel.append(float((layer.weight - w).pow(2).sum() / w.pow(2).sum()))
        if rel:
            out["weight_rel_mse"] = sum(rel) / len(rel)
        m = quantization_metrics(model)  # the last batch's, mean over layers
        for k in ("input/mse", "input/mse_expected"):
            if k in m:
                out[k.replace("/", "_")] = m[k]
    return out


def ptq(fp_model: ClassifierModule, qat: tuple[dict, dict]) -> ClassifierModule:
    model = copy.deepcopy(fp_model)
    attach_fake_quant(model, weight=qat[0], activation=qat[1])
    dm = data()
    calibrate(model, dm.train_dataloader(), forward=lambda m, batch: m(batch[0]))
    return model


def summarize(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [s["label"] for s in summary]
    xs = range(len(summary))
    a.bar(xs, [s["acc"]["mean"] for s in summary], yerr=[s["acc"]["sd"] for s in summary],
          color=["gray" if s["method"] == "fp" else ("C0" if s["method"] == "qat" else "C1")
                 for s in summary])
    a.set_xticks(list(xs), labels, rotation=60, ha="right", fontsize=8)
    a.set_ylim(min(s["acc"]["mean"] for s in summary) - 0.05, 1.0)
    a.set_ylabel("held-out accuracy (mean ± sd over seeds)")
    a.set_title("digits CNN: QAT (blue) vs PTQ (orange)")
    q = [s for s in summary if "weight_rel_mse" in s]
    b.bar(range(len(q)), [s["weight_rel_mse"]["mean"] for s in q],
          yerr=[s["weight_rel_mse"]["sd"] for s in q],
          color=["C0" if s["method"] == "qat" else "C1" for s in q])
    b.set_xticks(range(len(q)), [s["label"] for s in q], rotation=60, ha="right", fontsize=8)
    b.set_ylabel("relative weight error ‖Q(W)−W‖²/‖W‖²")
    b.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    p.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    p.add_argument("--name", default="qat")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    runs: list[dict] = []
    for seed in args.seeds:
        t = time.time()
        fp = train(seed, args.epochs, None)
        runs.append({"seed": seed, "method": "fp", "format": "fp32", "rule": "-",
                     **evaluate(fp)})
        for fmt in args.formats:
            for rule in args.rules:
                spec = specs(fmt, rule)
                runs.append({"seed": seed, "method": "ptq", "format": fmt, "rule": rule,
                             **evaluate(ptq(fp, spec))})
                runs.append({"seed": seed, "method": "qat", "format": fmt, "rule": rule,
                             **evaluate(train(seed, args.epochs, spec))})
        print(f"seed {seed} done in {time.time() - t:.0f} s", flush=True)

    summary = []
    keys = ("acc", "weight_rel_mse", "input_mse", "input_mse_expected")
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["format"], r["rule"]), []).append(r)
    for (method, fmt, rule), rs in groups.items():
        row = {"label": "fp32" if method == "fp" else f"{method} {fmt} {rule}", "method": method,
               "format": fmt, "rule": rule, "seeds": len(rs)}
        for k in keys:
            if k in rs[0]:
                row[k] = summarize([r[k] for r in rs])
        summary.append(row)
    flat = [{"label": s["label"], **{k: f"{s[k]['mean']:.4g} ± {s[k]['sd']:.2g}"
                                     for k in keys if k in s}} for s in summary]
    print(markdown_table(flat, ["label", *keys]))
    path = write_result(args.name, {
        "bench": "qat",
        "setup": {"model": "DigitsNet (conv16, conv32/2, fc64, fc10)", "data": "sklearn digits "
                  "8x8, seeded stratified 80/20 split (split seed 0); metrics on the 20 %",
                  "epochs": args.epochs, "batch_size": 64, "optimizer": "AdamW lr 3e-3 wd 1e-4",
                  "seeds": args.seeds, "formats": {f: FORMATS[f] for f in args.formats},
                  "rules": {r: {"weight_fit": RULES[r][0], "activation_fit": RULES[r][1]}
                            for r in args.rules},
                  "note": "small budget (20 epochs, 1 CPU thread); no model selection on the "
                          "held-out split; input MSE is the last evaluation batch's, mean over "
                          "layers"},
        "summary": summary, "runs": runs, "seconds": time.time() - t0,
    })
    plot(summary, RESULTS / f"{args.name}.png")
    print(f"wrote {path} and {args.name}.png")


if __name__ == "__main__":
    main()

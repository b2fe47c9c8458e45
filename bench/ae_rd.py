"""Rate–distortion of autoencoder bottlenecks on `photos`: llvq's against vector-quantize-pytorch.

Every bottleneck trains in the same autoencoder (`model=autoencoder`, D = 64, batch 32, Adam
1e-3) on the same pre-drawn `photos` batches for the same number of steps, over several seeds;
each family's rate is swept (VQ: K; FSQ: levels; LFQ: K; LL-VQ: `target_bits`; E8 / Z8
lattices: fixed scale; E8 / D4 on a learned projection, `projected`: the commitment weight).
On the 512 validation crops (32,768 latent vectors) it reports
val MSE / PSNR, distinct codes, the code entropy in bits per latent vector (the plug-in entropy
of whole code vectors: the real rate of a coder with one prior per vector; capped at
log2 32,768 = 15 bits; also over the last 16 training batches, `train_bits_per_vector`), the
factorised entropy (one prior per block / coordinate / stage), quantizer parameters, and the
training-step time ratio vs `identity` from one process with the models' steps interleaved on
the same batches. Draws MSE vs bits/vector (mean ± sd over seeds).

    python bench/ae_rd.py                                # the committed sweep, ~35 CPU-minutes
    python bench/ae_rd.py --steps 50 --seeds 0 --families vq vqp_fsq   # a quick look
    python bench/ae_rd.py --run myq:+model.quantizer.step=0.5         # any registered name
    python bench/ae_rd.py --families --run "projected:++model.quantizer.bound=1.0@projected_bounded"
    python bench/ae_rd.py --replot --name ae_rd_2000 --merge bench/results/ae_rd_2000steps*.json

A ``--run`` item is ``NAME[:OVERRIDE,...][@FAMILY]``: commas inside brackets stay in the value
(``levels=[8,5,5]``), and runs of one FAMILY (default NAME) make one curve. ``--merge`` draws
result files of one protocol (the same ``--steps`` and ``--seeds``) in one plot.

The peers come from `bench/vqp_plugin.py` (an llvq plugin, loaded with `--plugins`); when
vector-quantize-pytorch is not installed the bench says which peers are missing and runs the
rest. Writes bench/results/ae_rd.json and bench/results/ae_rd.png.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, markdown_table, write_result

from llvq.plugins import load_plugins
from llvq.quantizers import list_quantizers

ROOT = Path(__file__).resolve().parents[1]

#: family -> [(label, quantizer name, overrides)], the committed sweep.
SWEEP: dict[str, list[tuple[str, str, list[str]]]] = {
    "identity": [("identity", "identity", [])],
    "vq": [(f"vq K={k}", "vq", [f"model.quantizer.codebook_size={k}"]) for k in (16, 512)],
    "vq_ema": [(f"vq_ema K={k}", "vq_ema", [f"model.quantizer.codebook_size={k}"])
               for k in (16, 512)],
    "llvq": [(f"llvq target={t} bits", "llvq", ["model.quantizer.gamma=0",
                                                f"model.quantizer.target_bits={t}"])
             for t in (2, 3, 4, 6, 8)] + [("llvq paper (gamma=1)", "llvq", [])],
    "e8": [(f"e8 scale={s}", "e8", [f"++model.quantizer.scale={s}",
                                    "++model.quantizer.learn_scale=false"])
           for s in (0.5, 1.0, 2.0)],
    "zn": [(f"zn scale={s}", "zn", [f"++model.quantizer.scale={s}",
                                    "++model.quantizer.learn_scale=false"]) for s in (1.0, 2.0)],
    # E8 / D4 on a learned projection to 8 / 4 coordinates: the commitment weight beta sets the
    # rate (the encoder undoes a fixed lattice scale), beta=0 the highest
    "projected": [(f"projected E8/8 beta={b}", "projected", [f"model.quantizer.inner.beta={b}"])
                  for b in (0.5, 0.25, 0.1, 0.05, 0.0)]
    + [("projected E8/8 beta=0.0 scale=0.25", "projected",
        ["model.quantizer.inner.beta=0.0", "model.quantizer.inner.scale=0.25"])],
    "projected_d4": [(f"projected_d4 D4/4 beta={b}", "projected",
                      ["model.quantizer.project_dim=4", "model.quantizer.inner.name=dn",
                       f"model.quantizer.inner.beta={b}"]) for b in (0.05, 0.0)],
    "vqp_vq": [(f"vqp_vq K={k}", "vqp_vq", [f"++model.quantizer.codebook_size={k}"])
               for k in (16, 512)],
    "vqp_fsq": [(f"vqp_fsq levels={lv}", "vqp_fsq", [f"++model.quantizer.levels={lv}"])
                for lv in ("[4,4]", "[8,5,5]")],
    "vqp_lfq": [(f"vqp_lfq K={k}", "vqp_lfq", [f"++model.quantizer.codebook_size={k}"])
                for k in (16, 256)],
    "vqp_rvq": [("vqp_rvq K=16 Q=2", "vqp_rvq", ["++model.quantizer.codebook_size=16",
                                                 "++model.quantizer.num_quantizers=2"])],
    "vqp_simvq": [("vqp_simvq K=64", "vqp_simvq", ["++model.quantizer.codebook_size=64"])],
}
#: training batches (of 32 crops) whose code entropy is reported as ``train_bits_per_vector``
TRAIN_RATE_BATCHES = 16
PEER_FAMILIES = ("vqp_vq", "vqp_fsq", "vqp_lfq", "vqp_rvq", "vqp_simvq")
LATTICE_FAMILIES = ("llvq", "e8", "zn", "projected", "projected_d4")


def compose_model(name: str, overrides: list[str]):
    """The autoencoder config with quantizer ``name`` (its YAML, or any registered name)."""
    if (ROOT / "configs" / "model" / "quantizer" / f"{name}.yaml").is_file():
        sel = [f"model/quantizer={name}"]
    else:  # a plugin's quantizer: identity's config renamed
        sel = ["model/quantizer=identity", f"model.quantizer.name={name}"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=[*sel, "data=photos", "data.batch_size=32",
                                           "model.latent_dim=64", "model.lr=1e-3", *overrides])


def load_data(steps: int, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``steps`` training batches (drawn once, shared by every run) and the validation crops."""
    dm = instantiate(compose_model("identity", []).data)
    dm.setup("fit")
    batches: list[torch.Tensor] = []
    torch.manual_seed(seed)
    while len(batches) < steps:
        batches += [x for x, _ in dm.train_dataloader()][: steps - len(batches)]
    val = torch.cat([x for x, _ in dm.val_dataloader()])
    return batches, val


def entropy_bits(rows: torch.Tensor) -> float:
    """Plug-in entropy (bits) of the rows of an integer matrix, each row one symbol."""
    _, counts = torch.unique(rows, dim=0, return_counts=True)
    p = counts.double() / rows.shape[0]
    return float(-(p * p.log2()).sum())


def code_stats(q, codes: torch.Tensor, n_vectors: int) -> dict:
    """Distinct code vectors, joint and factorised entropy (bits / latent vector)."""
    rows = codes.reshape(n_vectors, -1)  # (N, k): one code row per latent vector
    block = getattr(q, "block", None) if q.vector_codes else 1
    block = block or 1  # llvq: one prior per coordinate; lattices: one per n-block
    factorised = sum(entropy_bits(rows[:, i:i + block]) for i in range(0, rows.shape[1], block))
    return {"distinct_codes": int(torch.unique(rows, dim=0).shape[0]),
            "bits_per_vector": entropy_bits(rows), "factorised_bits": factorised}


def train_one(label: str, name: str, overrides: list[str], seed: int,
              batches: list[torch.Tensor], val: torch.Tensor) -> dict:
    torch.manual_seed(seed)
    model = instantiate(compose_model(name, overrides).model).train()
    opt = torch.optim.Adam(model.parameters(), lr=model.hparams.lr)
    start = time.perf_counter()
    for x in batches:
        x_hat, out = model(x)
        loss = F.mse_loss(x_hat, x) + out.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    wall = time.perf_counter() - start
    model.eval()
    q = model.quantizer
    with torch.no_grad():
        codes = torch.cat([model.encode(v) for v in val.split(256)])
        x_hat = torch.cat([model.decode(c) for c in codes.split(256)])
    mse = float(F.mse_loss(x_hat, val))
    row = {"label": label, "quantizer": name, "seed": seed, "val_mse": mse,
           "psnr": 10 * math.log10(1.0 / mse), "train_wall_s": wall,
           "quantizer_params": sum(p.numel() for p in q.parameters())
           + sum(b.numel() for b in q.buffers()),  # learned or EMA state, as ae_compare counts
           "nominal_bits": q.bits_per_vector}
    if q.integer_codes:
        n_vectors = val.shape[0] * (val.shape[-1] // 4) ** 2  # two stride-2 stages
        row.update(code_stats(q, codes, n_vectors))
        # the same rate on the last TRAIN_RATE_BATCHES training batches (as many vectors as
        # the validation set): what a rate target set on the training data can hold
        train = batches[-TRAIN_RATE_BATCHES:]
        with torch.no_grad():
            train_codes = torch.cat([model.encode(x) for x in train])
        n_train = sum(x.shape[0] for x in train) * (val.shape[-1] // 4) ** 2
        row["train_bits_per_vector"] = entropy_bits(train_codes.reshape(n_train, -1))
        if q.codebook_size and not q.vector_codes:
            row["used_fraction"] = row["distinct_codes"] / q.codebook_size \
                if name not in ("vqp_rvq",) else None
    return row


def step_overhead(configs: list[tuple[str, str, list[str]]], batches: list[torch.Tensor],
                  steps: int) -> list[dict]:
    """Median training-step time per config, steps interleaved on the same batches."""
    models, opts = {}, {}
    for label, name, overrides in configs:
        torch.manual_seed(0)
        models[label] = instantiate(compose_model(name, overrides).model).train()
        opts[label] = torch.optim.Adam(models[label].parameters(), lr=1e-3)
    times: dict[str, list[float]] = {label: [] for label in models}
    for x in batches[:steps]:
        for label, model in models.items():
            t = time.perf_counter()
            x_hat, out = model(x)
            loss = F.mse_loss(x_hat, x) + out.loss
            opts[label].zero_grad(set_to_none=True)
            loss.backward()
            opts[label].step()
            times[label].append(time.perf_counter() - t)
    med = {k: statistics.median(v[3:]) for k, v in times.items()}
    base = med.get("identity", next(iter(med.values())))
    return [{"label": k, "step_ms_median": 1000 * v, "ratio_vs_identity": v / base}
            for k, v in med.items()]


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for label in dict.fromkeys(r["label"] for r in rows):
        rs = [r for r in rows if r["label"] == label]
        s = {"label": label, "quantizer": rs[0]["quantizer"], "seeds": len(rs),
             "quantizer_params": rs[0]["quantizer_params"], "nominal_bits": rs[0]["nominal_bits"]}
        for key in ("val_mse", "psnr", "bits_per_vector", "train_bits_per_vector",
                    "factorised_bits", "distinct_codes", "used_fraction"):
            vals = [r[key] for r in rs if r.get(key) is not None]
            if vals:
                s[key] = statistics.fmean(vals)
                s[key + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(s)
    return out


def family_of(label: str) -> str:
    return label.split(" ")[0]


def plot(summary: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.axvspan(2, 8, color="0.93", zorder=0, label="2–8 bits/vector")
    ident = next((s for s in summary if s["quantizer"] == "identity"), None)
    if ident:
        ax.axhline(ident["val_mse"], color="k", ls=":", lw=1, label="identity (no bottleneck)")
    families = dict.fromkeys(family_of(s["label"]) for s in summary if "bits_per_vector" in s)
    colors = plt.get_cmap("tab20").colors  # more families than tab10 has colours
    for i, fam in enumerate(families):
        pts = sorted((s for s in summary if family_of(s["label"]) == fam and "bits_per_vector" in s
                      and "paper" not in s["label"]), key=lambda s: s["bits_per_vector"])
        paper = [s for s in summary if family_of(s["label"]) == fam and "paper" in s["label"]]
        style = "--" if fam.startswith("vqp_") else "-"
        lattice = fam in LATTICE_FAMILIES or fam.startswith("projected")  # its --run variants
        marker = "s" if lattice else ("o" if fam.startswith("vqp_") else "^")
        if pts:
            line = ax.errorbar([s["bits_per_vector"] for s in pts], [s["val_mse"] for s in pts],
                               xerr=[s["bits_per_vector_sd"] for s in pts],
                               yerr=[s["val_mse_sd"] for s in pts], ls=style, marker=marker,
                               capsize=3, label=fam, color=colors[(2 * i) % 20 + (2 * i) // 20])
            color = line[0].get_color()
        else:
            color = None
        for s in paper:
            ax.errorbar([s["bits_per_vector"]], [s["val_mse"]], yerr=[s["val_mse_sd"]],
                        marker="*", ms=11, color=color, ls="none", label=f"{fam} (paper setting)")
    ax.set_xlabel("code entropy, bits per latent vector (plug-in, 32,768 validation vectors)")
    ax.set_ylabel("validation MSE")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def replot(name: str, merge: list[Path]) -> None:
    """Redraw ``<name>.png`` from ``<name>.json``, or from ``merge`` (written to ``<name>.json``)."""
    files = merge or [RESULTS / f"{name}.json"]
    saved = [json.loads(f.read_text()) for f in files]
    protocol = {(d["settings"]["steps"], tuple(d["settings"]["seeds"])) for d in saved}
    if len(protocol) > 1:
        raise SystemExit(f"--merge: the files ran different --steps / --seeds {sorted(protocol)}; "
                         "only one protocol can share a plot")
    (steps, seeds), = protocol
    summary = [s for d in saved for s in d["summary"]]
    labels = [s["label"] for s in summary]
    if len(set(labels)) < len(labels):
        raise SystemExit(f"--merge: a setting appears in two files: "
                         f"{sorted({x for x in labels if labels.count(x) > 1})}")
    if merge:
        write_result(name, {"merged_from": [str(f) for f in files],
                            "settings": {"steps": steps, "seeds": list(seeds)},
                            "summary": summary, "runs": [r for d in saved for r in d["runs"]],
                            "machines": [d["machine"] for d in saved]})
    png = RESULTS / f"{name}.png"
    plot(summary, png, f"photos, D=64, {steps} steps, seeds {list(seeds)} (mean ± sd)")
    print(f"wrote {png}")


def parse_run(item: str) -> tuple[str, str, list[str]]:
    """``NAME[:OVERRIDE,...][@FAMILY]`` -> ``(label, NAME, overrides)``; the label starts with
    FAMILY (default NAME), which names its curve in the plot."""
    item, _, family = item.partition("@")
    name, _, rest = item.partition(":")
    # split on commas outside brackets: "vqp_fsq:++model.quantizer.levels=[8,5,5],..."
    overrides = [o for o in re.split(r",(?![^\[]*\])", rest) if o]
    # label each override by its last key and value: "model.quantizer.bound=1.5" -> "bound=1.5"
    short = [f"{k.split('.')[-1]}={v}" if sep else o
             for o in overrides for k, sep, v in [o.lstrip("+~").partition("=")]]
    return (f"{family or name} {' '.join(short)}".strip(), name, overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--families", nargs="*", default=list(SWEEP), choices=list(SWEEP),
                        help="families of the committed sweep to run (none: only --run)")
    parser.add_argument("--run", nargs="+", default=[], metavar="NAME[:OVERRIDE,...][@FAMILY]",
                        help="extra runs: any registered quantizer with Hydra overrides; runs "
                             "with the same FAMILY (default NAME) make one curve")
    parser.add_argument("--plugins", nargs="+", default=["vqp_plugin"], metavar="MODULE")
    parser.add_argument("--overhead-steps", type=int, default=40,
                        help="interleaved steps for the step-time ratios (0: skip them; the "
                             "first 3 are warm-up)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: no oversubscription on a shared machine)")
    parser.add_argument("--name", default="ae_rd", help="result name under bench/results/")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw bench/results/<name>.png from <name>.json (or from the "
                             "--merge files)")
    parser.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                        help="with --replot: result files of one protocol (the same --steps and "
                             "--seeds) whose settings are drawn together in <name>.png; their "
                             "summaries are written to <name>.json")
    args = parser.parse_args()
    if args.overhead_steps < 0 or 0 < args.overhead_steps < 4:
        parser.error(f"--overhead-steps {args.overhead_steps}: give 0 (no timing) or at least 4"
                     " (the first 3 steps are warm-up and not timed)")
    if args.merge and not args.replot:
        parser.error("--merge goes with --replot")
    if args.replot:
        replot(args.name, [Path(m) for m in args.merge])
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    load_plugins(args.plugins)
    import vqp_plugin

    missing = vqp_plugin.missing_reason()
    if missing:
        print(f"WARNING: {missing}; running the rest", flush=True)
    configs = [c for fam in args.families for c in SWEEP[fam] if c[1] in list_quantizers()]
    skipped = [c[0] for fam in args.families for c in SWEEP[fam] if c[1] not in list_quantizers()]
    for item in args.run:
        label, name, overrides = parse_run(item)
        if name not in list_quantizers():
            parser.error(f"unknown quantizer {name!r}; registered: {', '.join(list_quantizers())}")
        configs.append((label, name, overrides))
    if not configs:
        parser.error("nothing to run: give --families and/or --run"
                     + (f" (skipped, not registered: {', '.join(skipped)})" if skipped else ""))

    batches, val = load_data(args.steps)
    print(f"{len(configs)} configs x {len(args.seeds)} seeds, {args.steps} steps; "
          f"validation {tuple(val.shape)}", flush=True)
    rows, t0 = [], time.perf_counter()
    for label, name, overrides in configs:
        for seed in args.seeds:
            r = train_one(label, name, overrides, seed, batches, val)
            rows.append(r)
            print(f"[{time.perf_counter() - t0:6.0f}s] {label} seed {seed}: mse {r['val_mse']:.5f} "
                  f"bits {r.get('bits_per_vector', float('nan')):.2f} "
                  f"codes {r.get('distinct_codes')} ({r['train_wall_s']:.0f}s)", flush=True)
    summary = summarise(rows)
    # one config per family for the timing ratio (the middle of its sweep)
    timed = list({family_of(c[0]): c for c in configs}.values())
    overhead = step_overhead(timed, batches, args.overhead_steps) if args.overhead_steps else []
    cols = ["label", "val_mse", "val_mse_sd", "psnr", "bits_per_vector", "bits_per_vector_sd",
            "train_bits_per_vector", "factorised_bits", "distinct_codes", "used_fraction",
            "quantizer_params"]
    print(markdown_table(summary, cols))
    if overhead:
        print()
        print(markdown_table(overhead, ["label", "step_ms_median", "ratio_vs_identity"]))
    if args.no_save:
        return
    budget = (f"{len(configs)} configs x {len(args.seeds)} seeds x {args.steps} steps of batch 32 "
              f"on CPU, {time.perf_counter() - t0:.0f} s wall in all")
    path = write_result(args.name, {
        "settings": vars(args), "budget": budget,
        "protocol": "photos, D=64, batch 32, Adam lr 1e-3, same pre-drawn batches for every run; "
                    "rate = plug-in entropy of whole code vectors over the 512 validation crops "
                    "(32,768 latent vectors, at most 15 bits); train_bits_per_vector: the same "
                    "over the last 16 training batches",
        "shared_machine": "measured on 2 CPU cores shared with other jobs: wall times and the "
                          "step-time ratios are noisy (the ratios are interleaved in one process)",
        "missing_peers": missing, "skipped": skipped,
        "summary": summary, "runs": rows, "step_overhead": overhead})
    png = RESULTS / f"{args.name}.png"
    plot(summary, png, f"photos, D=64, {args.steps} steps, seeds {args.seeds} (mean ± sd)")
    print(f"\nwrote {path} and {png}")


if __name__ == "__main__":
    main()

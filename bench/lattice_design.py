"""Lattice design: NSM of orthogonal splicing vs Householder and matrix-exponential fusion.

For each dimension: the optimally scaled splice of the best pair of seed lattices
(:func:`llvq.lattices.design.auto_parts`), then the two fusion parametrizations trained by SGD
from that splice (Zhang et al. 2025, arXiv:2502.06887), each with its final Monte-Carlo NSM ±
standard error (exact decoder), next to the best known value (docs: nsm.md), with wall time.
Each fusion run is :func:`llvq.lattices.design.design_lattice` on a
:class:`~llvq.lattices.design.DesignConfig`: the same design step as ``train.py
experiment=lattice_design``, so the same settings and seed give the same lattice there.

    python bench/lattice_design.py                          # dims 13-22 + check 2-12, ~15-20 min
    python bench/lattice_design.py --dims 13 15 --steps 100 # quick look
    python bench/lattice_design.py --dims 22 --check-dims --rebase --seeds 0 1 2 3 --jobs 4
                                                            # multi-start: one process per run
    python bench/lattice_design.py --glue --dims 16 17 18 19 20 21 22 --check-dims --steps 0
                                                            # glue search (llvq.lattices.glue)

With ``--glue`` the parts are glued (the densest index-2^k superlattice the search finds, parts
at equal minimum norm; the parts default to E8 + E8 in 16 and Lambda16 + a root lattice in
17-23) and the fusion runs refine the glued lattice instead of the splice; the table adds its
NSM and index.

Writes bench/results/lattice_design.json.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing as mp
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import markdown_table, write_result

from llvq.lattices import BEST_KNOWN
from llvq.lattices.design import (
    REFERENCE_NSM,
    DesignConfig,
    default_parts,
    design_lattice,
    glue_generator,
    precise_nsm,
    save_designed,
    splice_generator,
)
from llvq.plugins import load_plugins

METHODS = ("householder", "matrix_exp")


@contextlib.contextmanager
def progress(total: int, desc: str, show: bool = True):
    """A callback ``(step, batch_nsm)`` that drives a tqdm bar (running mean of the last 100
    batch estimates); a no-op without tqdm or with ``show=False``."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        show = False
    if not show:
        yield lambda step, value: None
        return
    bar = tqdm(total=total, desc=desc, unit="step", leave=False, mininterval=5, file=sys.stderr)
    recent: list[float] = []

    def update(step: int, value: float) -> None:
        recent.append(value)
        del recent[:-100]
        bar.update(1)
        if step % 100 == 99:
            bar.set_postfix(nsm=f"{sum(recent) / len(recent):.6f}", refresh=False)

    try:
        yield update
    finally:
        bar.close()


def bench_dim(dim: int, steps: int, batch: int, lr: float, eval_samples: int, seed: int,
              methods: tuple[str, ...] = METHODS, rebase: bool = False,
              anneal: float | None = None, save: Path | None = None,
              parts: list[str] | None = None, tag: str = "", show: bool = True,
              glue: bool = False, glue_trials: int = 8) -> dict:
    """One dimension and seed: the splice (and with ``glue`` the glued lattice) and each fusion
    method, NSM ± s.e., gap, wall time."""
    parts = [int(p) if p.isdigit() else p for p in parts] if parts else default_parts(dim, glue)
    t0 = time.perf_counter()
    splice, splice_se = precise_nsm(splice_generator(parts), eval_samples, seed=seed + 1_000_003)
    best = REFERENCE_NSM[dim]
    names = [BEST_KNOWN[p] if isinstance(p, int) else Path(p).stem for p in parts]
    row = {"dim": dim, "seed": seed, "parts": " + ".join(names),
           "splice": splice, "splice_se": splice_se, "splice_s": time.perf_counter() - t0,
           "best_known": best}
    if glue:
        t0 = time.perf_counter()
        glued = glue_generator(parts, glue_trials, seed)
        value, se = precise_nsm(glued.generator, eval_samples, seed=seed + 1_000_003)
        row.update({"glue": value, "glue_se": se, "glue_s": time.perf_counter() - t0,
                    "glue_index_bits": glued.index_bits, "glue_gap_pct": 100 * (value / best - 1),
                    "glue_beats_splice": bool(splice - value > 3 * math.hypot(splice_se, se))})
        if save is not None:
            save_designed(save / f"lattice_dim{dim}_glue{tag.replace(' ', '_')}.safetensors",
                          glued.generator, nsm=value, se=se, method="glue", dim=dim, seed=seed,
                          parts=parts, samples=eval_samples, glue_index_bits=glued.index_bits)
    for m in methods:
        config = DesignConfig(dim, m, parts=parts, batch_size=batch, lr=lr,
                              anneal=steps / 2 if anneal is None else anneal, rebase=rebase,
                              seed=seed, eval_samples=eval_samples, glue=glue,
                              glue_trials=glue_trials)
        with progress(steps, f"dim {dim} {m}{tag}", show) as bar:
            r = design_lattice(config, steps=steps, callback=bar)  # the step train.py runs
        if save is not None:
            name = f"lattice_dim{dim}_{m}{tag.replace(' ', '_')}.safetensors"
            save_designed(save / name, r.generator, nsm=r.nsm, se=r.se, method=m, dim=dim,
                          seed=seed, parts=parts, steps=steps, samples=eval_samples,
                          rebase=rebase, lr=lr, glue=glue)
        row.update({m: r.nsm, f"{m}_se": r.se, f"{m}_s": r.seconds,
                    f"{m}_gap_pct": 100 * (r.nsm / best - 1),
                    f"{m}_beats_splice": bool(splice - r.nsm > 3 * math.hypot(splice_se, r.se))})
    row["splice_gap_pct"] = 100 * (splice / best - 1)
    return row


def spread(rows: list[dict], methods: tuple[str, ...]) -> list[dict]:
    """Per dimension and method: the best, median and worst gap over the seeds."""
    out = []
    for dim in sorted({r["dim"] for r in rows}):
        gaps = {m: sorted(r[m + "_gap_pct"] for r in rows if r["dim"] == dim) for m in methods}
        out.append({"n": dim, **{m: f"{g[0]:+.2f} / {statistics.median(g):+.2f} / {g[-1]:+.2f}"
                                 for m, g in gaps.items()}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="*", default=list(range(13, 23)))
    ap.add_argument("--check-dims", type=int, nargs="*", default=list(range(2, 13)))
    ap.add_argument("--steps", type=int, default=200, help="SGD steps per fusion run")
    ap.add_argument("--batch", type=int, default=512, help="samples per SGD step")
    ap.add_argument("--lr", type=float, default=2.0)
    ap.add_argument("--eval-samples", type=int, default=40_000)
    ap.add_argument("--seed", "--seeds", dest="seeds", type=int, nargs="+", default=[0],
                    help="one run per seed (initial parameters, samples, evaluation samples)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs (dimension x seed) in parallel processes, one decoder thread each "
                         "unless --threads says otherwise")
    ap.add_argument("--methods", nargs="*", choices=METHODS, default=list(METHODS),
                    help="fusion methods to run (none: only the splice, and the glue with --glue)")
    ap.add_argument("--anneal", type=float, default=None,
                    help="step size lr / (1 + t / anneal); default steps / 2")
    ap.add_argument("--rebase", action="store_true",
                    help="fusion: every 100 steps base <- LLL(Q base), Q <- I")
    ap.add_argument("--parts", nargs="+", default=None,
                    help="spliced lattices (dimensions, names such as Lambda16 E6, or generator "
                         ".safetensors files, e.g. one this bench --save'd); one --dims only; "
                         "default: the best split of each dimension")
    ap.add_argument("--glue", action="store_true",
                    help="glue the parts (llvq.lattices.glue) and fuse from the glued lattice; "
                         "parts default to E8 + E8 in 16, Lambda16 + a root lattice in 17-23")
    ap.add_argument("--glue-trials", type=int, default=8, help="restarts of the glue search")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads of the exact decoder (rows of a batch split over them)")
    ap.add_argument("--save", type=Path, default=None,
                    help="also write each designed generator to DIR/lattice_dim<n>_<method>"
                         ".safetensors (loads with model/quantizer=lattice)")
    ap.add_argument("--name", default="lattice_design",
                    help="result file bench/results/<name>.json (written after every dimension)")
    args = ap.parse_args()
    load_plugins()  # lattices registered by outside packages resolve in --parts
    methods = tuple(args.methods)
    shown = ("glue", *methods) if args.glue else methods  # columns after the splice
    if args.parts and len(args.dims) + len(args.check_dims) != 1:
        ap.error("--parts needs exactly one dimension (--dims N --check-dims)")
    torch.set_num_threads(args.threads)

    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    many = len(args.seeds) > 1
    common = {"steps": args.steps, "batch": args.batch, "lr": args.lr,
              "eval_samples": args.eval_samples, "methods": methods, "rebase": args.rebase,
              "anneal": args.anneal, "save": args.save, "parts": args.parts, "glue": args.glue,
              "glue_trials": args.glue_trials}
    tasks = [{**common, "dim": dim, "seed": seed, "tag": f" seed{seed}" if many else ""}
             for dim in [*args.check_dims, *args.dims] for seed in args.seeds]
    rows: list[dict] = []

    def done(row: dict) -> None:
        rows.append(row)
        rows.sort(key=lambda r: (r["dim"], r["seed"]))
        fused = "  ".join(f"{m} {row[m]:.6f} ({row[m + '_gap_pct']:+.2f} %, {row[m + '_s']:.0f} s)"
                          for m in shown)
        label = f"dim {row['dim']}" + (f" seed {row['seed']}" if many else "")
        print(f"{label}: splice {row['splice']:.6f}  {fused}  best {row['best_known']:.6f}",
              flush=True)
        write_result(args.name, {"settings": settings, "rows": rows})  # partial results survive

    if args.jobs <= 1:
        for task in tasks:
            done(bench_dim(**task))
    else:  # one process per run; progress bars off (they would interleave)
        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("fork"),
                                 initializer=torch.set_num_threads,
                                 initargs=(args.threads,)) as pool:
            futures = [pool.submit(bench_dim, **task, show=False) for task in tasks]
            for fut in as_completed(futures):
                done(fut.result())

    table = [{"n": r["dim"], **({"seed": r["seed"]} if many else {}), "parts": r["parts"],
              "best known": f"{r['best_known']:.6f}",
              "splice": f"{r['splice']:.6f} ± {r['splice_se']:.1e}",
              **({"index": f"2^{r['glue_index_bits']}"} if args.glue else {}),
              **{m: f"{r[m]:.6f} ± {r[m + '_se']:.1e}" + (" *" if r[m + "_beats_splice"] else "")
                 for m in shown},
              "gap % (splice / " + " / ".join(shown) + ")":
                  " / ".join(f"{r[k + '_gap_pct']:+.2f}" for k in ("splice", *shown)),
              "time s": " / ".join(f"{r[m + '_s']:.0f}" for m in shown)}
             for r in rows]
    columns = ["n", *(["seed"] if many else []), "parts", "best known", "splice",
               *(["index"] if args.glue else []), *shown,
               "gap % (splice / " + " / ".join(shown) + ")", "time s"]
    print(markdown_table(table, columns))
    print("* = below the splice by more than 3 combined standard errors")
    if many:
        print(markdown_table(spread(rows, shown), ["n", *shown]))
        print("gap % over the seeds: best / median / worst")
    path = write_result(args.name, {"settings": settings, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

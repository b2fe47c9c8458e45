"""Decoder throughput and NSM of the named lattices (writes bench/results/lattice_*.json).

Throughput: vectors per second of every closest-point decoder in dimensions 2, 8, 16, 24,
next to a plain tensor copy of the same data and to VQ (nearest of K codewords by squared
distance, plain torch) with K = 512 and 65,536, as ratios. NSM: Monte-Carlo estimate with
the exact decoder (or the Conway–Sloane one) for BEST_KNOWN[n], n = 1..24, next to the
reference of nsm.md.

    python bench/lattice_speed.py                 # full run (~5 min on 2 cores)
    python bench/lattice_speed.py --quick         # smaller sample counts
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from llvq.lattices import BEST_KNOWN, closest_point, get_lattice, nsm

RESULTS = Path(__file__).resolve().parent / "results"

# nsm.md: independent MC (n <= 16: 1e7 samples; above: 1e6) or published value
REFERENCE = {1: 0.083333, 2: 0.080188, 3: 0.078543, 4: 0.076603, 5: 0.075625, 6: 0.074244,
             7: 0.073116, 8: 0.071682, 9: 0.071623, 10: 0.070814, 11: 0.070426, 12: 0.070031,
             13: 0.069693, 14: 0.069261, 15: 0.068872, 16: 0.068298, 17: 0.068217,
             18: 0.067936, 19: 0.067695, 20: 0.067324, 21: 0.067035, 22: 0.066656,
             23: 0.066264, 24: 0.065771}

# (dimension, lattice, decoders to time)
SPEED_CASES = [(2, "A2", ["fast", "exact", "nearest_plane", "babai"]),
               (2, "Z2", ["fast"]),
               (8, "Z8", ["fast"]), (8, "D8", ["fast"]), (8, "A8", ["fast"]),
               (8, "E8", ["fast", "exact", "nearest_plane", "babai"]),
               (16, "D16", ["fast"]),
               (16, "Lambda16", ["exact", "nearest_plane", "babai"]),
               (24, "D24", ["fast"]),
               (24, "Lambda24", ["exact", "nearest_plane", "babai"])]


def _time(fn: Callable[[], object], min_time: float = 0.5, min_reps: int = 3) -> float:
    """Seconds per call (best of ``min_reps`` or more runs lasting at least ``min_time``)."""
    if min_reps > 1:
        fn()  # warm-up
    best, total, reps = float("inf"), 0.0, 0
    while total < min_time or reps < min_reps:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, total, reps = min(best, dt), total + dt, reps + 1
    return best


def _vq(x: torch.Tensor, codebook: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    out = torch.empty_like(x)
    cn = codebook.square().sum(1)
    for s in range(0, x.shape[0], chunk):
        xs = x[s: s + chunk]
        idx = (cn - 2 * xs @ codebook.T).argmin(1)  # ||x||^2 is constant per row
        out[s: s + chunk] = codebook[idx]
    return out


def speed(num: int, exact_num: dict[int, int]) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(0)
    for n in sorted({c[0] for c in SPEED_CASES}):
        x = torch.randn(num, n, generator=g)
        copy = _time(x.clone)
        books = {k: torch.randn(k, n, generator=g) for k in (512, 65_536)}
        x_vq = {512: x, 65_536: x[: num // 10]}  # per-vector cost; fewer vectors for 65,536
        vq = {k: _time(functools.partial(_vq, x_vq[k], books[k]), 0.2, 1) * num / len(x_vq[k])
              for k in books}
        for dim, name, methods in SPEED_CASES:
            if dim != n:
                continue
            lat = get_lattice(name)
            for m in methods:
                m_num = exact_num.get(n, num) if m == "exact" else num
                xm = x[:m_num]
                if m == "fast":
                    t = _time(functools.partial(lat.closest_point, xm))
                else:
                    slow = m == "exact"
                    t = _time(functools.partial(closest_point, lat.generator, xm, m),
                              0.0 if slow else 0.5, 1 if slow else 3)
                vps = m_num / t
                rows.append({"dim": n, "lattice": name, "decoder": m, "vectors": m_num,
                             "vectors_per_s": vps, "copy_vectors_per_s": num / copy,
                             "slowdown_vs_copy": (num / copy) / vps,
                             "speedup_vs_vq512": vps / (num / vq[512]),
                             "speedup_vs_vq65536": vps / (num / vq[65_536])})
                print(f"| {n} | {name} | {m} | {m_num} | {vps:,.0f} | {(num / copy) / vps:.1f}x |"
                      f" {vps / (num / vq[512]):.2f} | {vps / (num / vq[65_536]):.2f} |",
                      flush=True)
    return rows


def nsm_table(samples: dict[int, int]) -> list[dict]:
    rows = []
    for n in range(1, 25):
        name = BEST_KNOWN[n]
        num = samples[n]
        t = time.perf_counter()
        g, se = nsm(name, num_samples=num, seed=0, batch_size=min(num, 50_000))
        dt = time.perf_counter() - t
        ref = REFERENCE[n]
        rows.append({"dim": n, "lattice": name, "nsm": g, "se": se, "samples": num,
                     "reference": ref, "seconds": dt})
        print(f"| {n} | {name} | {g:.6f} ± {se:.1e} | {ref:.6f} | {num} | {dt:.1f} |", flush=True)
    return rows


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=100_000, help="vectors per speed case")
    parser.add_argument("--quick", action="store_true", help="small NSM sample counts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--skip-nsm", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    if not args.skip_speed:
        print("| n | lattice | decoder | vectors | vectors/s | copy time ratio | vs VQ-512 | "
              "vs VQ-65536 |\n|---|---|---|---|---|---|---|---|", flush=True)
        rows = speed(args.num, {16: args.num, 24: max(args.num // 10, 500)})
        (RESULTS / "lattice_speed.json").write_text(json.dumps(
            {"machine": machine(), "num": args.num, "results": rows}, indent=1))
    if not args.skip_nsm:
        scale = 0.1 if args.quick else 1.0
        samples = {n: int(scale * (200_000 if n <= 12 else 100_000))
                   for n in range(1, 25)}
        print("\n| n | lattice | NSM (ours) ± s.e. | reference | samples | s |\n"
              "|---|---|---|---|---|---|", flush=True)
        rows = nsm_table(samples)
        (RESULTS / "lattice_nsm.json").write_text(json.dumps(
            {"machine": machine(), "results": rows}, indent=1))


if __name__ == "__main__":
    main()

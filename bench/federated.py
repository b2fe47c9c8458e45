"""Federated digits benchmark: final test accuracy and total bits per compressor (OLALa, UVeQFed).

    python bench/federated.py --jobs 2             # the full grid below (about 40 min on 2 CPU cores)
    python bench/federated.py --rounds 5 --alphas 1.0 --rates 2 --variants lattice olala@0.01

Digits, 10 clients, Dirichlet(alpha) labels, alpha in {0.1, 1.0}, R in {1, 2, 3} bits per
coordinate, linear model, 3 local epochs at lr 0.3 per round (30 rounds: within about 2 points
of the 60-round accuracy without compression). Variants (``name@overload``; ``@mse`` is the
least-error scale instead of an overload target):

    none, qsgd, uniform@{0, 0.005, 0.01, mse}, lattice@{0, 0.005, 0.01, mse} (A2),
    olala@{0, 0.005, 0.01, 0.1, mse}

Reported per run: the test accuracy after the last round and averaged over the last 5 rounds,
the accuracy every 5 rounds, total bits sent, the mean SNR of the averaged updates, the
overload rate, and for OLALa the share of client updates sent with a learned lattice and their
mean gain over A2. The rounds run through :meth:`~llvq.modules.FederatedModule.run_round` and
:meth:`~llvq.modules.FederatedModule.apply_update` (the same code as ``run_unit``) without the trainer. Writes ``bench/results/federated.json``.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import torch
from _report import markdown_table, write_result

from llvq.modules import FederatedModule

VARIANTS = ["none", "qsgd", "uniform@0", "uniform@0.005", "uniform@0.01", "uniform@mse",
            "lattice@0", "lattice@0.005", "lattice@0.01", "lattice@mse",
            "olala@0", "olala@0.005", "olala@0.01", "olala@0.1", "olala@mse"]


def parse_variant(variant: str) -> tuple[str, float | None]:
    name, _, target = variant.partition("@")
    if not target:
        return name, 0.01
    return name, None if target == "mse" else float(target)


def one_run(alpha: float, rate: int, variant: str, args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    compressor, overload = parse_variant(variant)
    torch.manual_seed(args.seed)
    module = FederatedModule(model=args.model, num_clients=10, alpha=alpha, compressor=compressor,
                             rate=float(rate), overload=overload, rounds=args.rounds,
                             local_epochs=args.local_epochs, local_lr=args.local_lr, seed=args.seed,
                             plot_clients=0)
    bits, snr, over, accs, curve, start = 0.0, [], [], [], [], time.time()
    learned = gain = answered = 0.0
    for t in range(args.rounds):
        avg, s = module.run_round(t)
        if avg is not None:
            module.apply_update(avg)  # the server's step of run_unit (server_lr = 1: FedAvg)
        bits += s["bits"]
        if s["noise"] > 0:
            snr.append(10 * torch.log10(torch.tensor(s["signal"] / s["noise"])).item())
        over.append(s["overloaded"] / max(s["blocks"], 1.0))
        learned, gain, answered = learned + s["learned"], gain + s["gain_db"], answered + s["answered"]
        loss, acc = module.evaluate()
        accs.append(acc)
        if (t + 1) % 5 == 0:
            curve.append(round(acc, 4))
    row = {"alpha": alpha, "rate": rate, "variant": variant, "compressor": compressor,
           "overload_target": "mse" if overload is None else overload,
           "test_acc": accs[-1], "test_acc_last5": sum(accs[-5:]) / len(accs[-5:]), "test_loss": loss,
           "acc_every_5": curve, "total_bits": bits,
           "mean_snr_db": sum(snr) / len(snr) if snr else None,  # None: lossless
           "overload_rate": sum(over) / len(over), "seconds": time.time() - start}
    if compressor == "olala":
        row["learned_share"] = learned / max(answered, 1.0)
        row["gain_db"] = gain / max(answered, 1.0)
    print(f"alpha {alpha} R {rate} {variant:14s} acc {row['test_acc']:.3f} (last 5 {row['test_acc_last5']:.3f}) "
          f"snr {row['mean_snr_db'] or float('inf'):.2f} dB  {row['seconds']:.0f} s", flush=True)
    return row


def pivot(rows: list[dict], key: str = "test_acc_last5") -> str:
    """One markdown table per alpha: rows R, columns the variants (``key`` in each cell)."""
    out = []
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    for alpha in sorted({r["alpha"] for r in rows}):
        cells = {(r["rate"], r["variant"]): r for r in rows if r["alpha"] == alpha}
        none = next((r for r in rows if r["alpha"] == alpha and r["variant"] == "none"), None)
        table = []
        for rate in sorted({r["rate"] for r in rows}):
            table.append({"R": rate, **{v: f"{cells[(rate, v)][key]:.3f}" for v in variants
                                        if v != "none" and (rate, v) in cells}})
        head = f"alpha = {alpha}" + (f" (none: {none[key]:.3f})" if none and none[key] is not None else "")
        out.append(head + "\n\n" + markdown_table(table, ["R", *[v for v in variants if v != "none"]]))
    return "\n\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--model", default="linear")
    parser.add_argument("--local-epochs", type=int, default=3)
    parser.add_argument("--local-lr", type=float, default=0.3)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--rates", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (one thread each)")
    parser.add_argument("--name", default="federated", help="result file bench/results/<name>.json")
    parser.add_argument("--report", metavar="JSON", nargs="+",
                        help="print the tables of result files (rows merged) and exit")
    args = parser.parse_args()
    if args.report:
        import json
        from pathlib import Path

        rows = [r for f in args.report for r in json.loads(Path(f).read_text())["rows"]]
        order = {v: i for i, v in enumerate(VARIANTS)}
        rows.sort(key=lambda r: order.get(r["variant"], len(order)))
        print(pivot(rows))
        print("\nmean SNR of the averaged updates (dB):\n")
        print(pivot(rows, "mean_snr_db"))
        return
    for v in args.variants:
        parse_variant(v)  # fail early on a typo
    grid = [(alpha, rate, v) for alpha in args.alphas for rate in args.rates for v in args.variants
            if not (parse_variant(v)[0] == "none" and rate != args.rates[0])]  # fp32 ignores R
    start = time.time()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(one_run, *zip(*grid, strict=True), [args] * len(grid)))
    else:
        rows = [one_run(*g, args) for g in grid]
    cols = ["alpha", "rate", "variant", "test_acc", "test_acc_last5", "total_bits", "mean_snr_db",
            "overload_rate", "learned_share", "gain_db", "seconds"]
    print(markdown_table(rows, cols))
    print(pivot(rows))
    path = write_result(args.name, {"config": vars(args), "wall_seconds": time.time() - start, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

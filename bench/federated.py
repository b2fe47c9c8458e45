"""Federated digits benchmark: final test accuracy and total bits per compressor (OLALa, UVeQFed).

    python bench/federated.py                      # the grid below (about 15 min on 2 CPU cores at 30 rounds)
    python bench/federated.py --rounds 5 --alphas 1.0 --rates 2   # a quick look

Digits, 10 clients, Dirichlet(alpha) labels, alpha in {0.1, 1.0}, R in {1, 2, 3} bits per
coordinate; compressors none / uniform / qsgd / lattice (A2) / olala at a 1 % overload target,
and olala at overload targets {0, 0.5 %, 10 %}. The rounds run through
:meth:`~llvq.modules.FederatedModule.run_round` (the same code as ``training_step``) without the
trainer. Writes ``bench/results/federated.json``.
"""

from __future__ import annotations

import argparse
import time

import torch
from _report import markdown_table, write_result

from llvq.modules import FederatedModule

VARIANTS = [("none", 0.01), ("uniform", 0.01), ("qsgd", 0.01), ("lattice", 0.01), ("olala", 0.01),
            ("olala", 0.0), ("olala", 0.005), ("olala", 0.10)]


def one_run(alpha: float, rate: int, compressor: str, overload: float, args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    module = FederatedModule(model=args.model, num_clients=10, alpha=alpha, compressor=compressor,
                             rate=float(rate), overload=overload, rounds=args.rounds,
                             local_epochs=args.local_epochs, local_lr=args.local_lr, seed=args.seed,
                             plot_clients=0)
    bits, snr, over, start = 0.0, [], [], time.time()
    for t in range(args.rounds):
        avg, s = module.run_round(t)
        if avg is not None:
            with torch.no_grad():
                vec = torch.nn.utils.parameters_to_vector(module.net.parameters()) + avg.float()
                torch.nn.utils.vector_to_parameters(vec, module.net.parameters())
        bits += s["bits"]
        if s["noise"] > 0:
            snr.append(10 * torch.log10(torch.tensor(s["signal"] / s["noise"])).item())
        over.append(s["overloaded"] / max(s["blocks"], 1.0))
    loss, acc = module.evaluate()
    return {"alpha": alpha, "rate": rate, "compressor": compressor, "overload_target": overload,
            "test_acc": acc, "test_loss": loss, "total_bits": bits,
            "mean_snr_db": sum(snr) / len(snr) if snr else None,  # None: lossless
            "overload_rate": sum(over) / len(over), "seconds": time.time() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--model", default="linear")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--local-lr", type=float, default=0.1)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--rates", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    for alpha in args.alphas:
        for rate in args.rates:
            for compressor, overload in VARIANTS:
                if compressor == "none" and rate != args.rates[0]:
                    continue  # fp32 does not depend on R
                row = one_run(alpha, rate, compressor, overload, args)
                rows.append(row)
                print(row, flush=True)
    cols = ["alpha", "rate", "compressor", "overload_target", "test_acc", "total_bits",
            "mean_snr_db", "overload_rate", "seconds"]
    print(markdown_table(rows, cols))
    path = write_result("federated", {"config": vars(args), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Compare autoencoder bottlenecks on `photos`: by default VQ-VAE, VQ-VAE (EMA), LL-VQ-VAE, identity.

Same architecture, data, seed and step budget for each; reports validation reconstruction MSE,
distinct codes used over the validation set (the LL-VQ-VAE paper's "embeddings/dataset"),
quantizer parameters and wall time per training step, plus the quantizer's own forward+backward
cost on 65,536 vectors (K = 512, D = 64), and the training-step overhead of each bottleneck over
`identity` with the models' steps interleaved on the same batches.

    python bench/ae_compare.py                 # ~5-10 minutes on 2 CPU cores
    python bench/ae_compare.py --steps 50      # quick look
    python bench/ae_compare.py --quantizers identity e8 myq   # any registered name, plugins too

`--quantizers` takes any registry name (`llvq.quantizers.list_quantizers()`), including those of
outside plugins (entry points of the `llvq.plugins` group, or `--plugins mod ...` for plain
modules). A name with `configs/model/quantizer/<name>.yaml` uses it (and the paper's experiment
for vq, vq_ema and llvq); any other name is built as `model/quantizer=identity
model.quantizer.name=<name>`; `--set NAME:KEY=VALUE` passes an override to one quantizer's
runs (`--set myq:+model.quantizer.step=0.5`), `--set KEY=VALUE` to all.

Writes bench/results/ae_compare.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import markdown_table, write_result

from llvq.plugins import load_plugins
from llvq.quantizers import build, list_quantizers

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["identity", "vq", "vq_ema", "llvq"]
# the LL-VQ-VAE paper's settings for its three bottlenecks; other names run with the defaults
EXPERIMENT = {"vq": "vqvae", "vq_ema": "vqvae_ema", "llvq": "llvqvae"}
#: extra overrides (`--set`): (quantizer name or None for every one, override)
EXTRA: list[tuple[str | None, str]] = []


class StepTimer(L.Callback):
    """Wall time of each training step (forward, backward, optimizer)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args: object) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, *args: object) -> None:
        self.times.append(time.perf_counter() - self._t)


def quantizer_overrides(name: str) -> list[str]:
    """Overrides selecting the quantizer ``name``: its config file, or any config renamed."""
    if (ROOT / "configs" / "model" / "quantizer" / f"{name}.yaml").is_file():
        return [f"model/quantizer={name}"]
    return ["model/quantizer=identity", f"model.quantizer.name={name}"]  # a plugin's quantizer


def compose_for(name: str, batch_size: int):
    overrides = [*quantizer_overrides(name), f"data.batch_size={batch_size}"]
    if name in EXPERIMENT:
        overrides.append(f"experiment={EXPERIMENT[name]}")
    overrides += [o for scope, o in EXTRA if scope in (None, name)]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(ROOT / "logs" / "bench")
    return cfg


def distinct_codes(model: torch.nn.Module, loader) -> tuple[int, float]:
    """Distinct code vectors (lattice) or indices (codebook) over a loader, and val MSE."""
    seen: set = set()
    sq_err, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for x, _ in loader:
            codes = model.encode(x)
            x_hat = model.decode(codes)
            sq_err += float(torch.nn.functional.mse_loss(x_hat, x, reduction="sum"))
            count += x.numel()
            if not model.quantizer.integer_codes:
                continue
            flat = codes.reshape(-1, codes.shape[-1]) if model.quantizer.vector_codes else codes.reshape(-1, 1)
            seen.update(map(tuple, torch.unique(flat, dim=0).tolist()))
    return len(seen), sq_err / count


def train_one(name: str, steps: int, batch_size: int, seed: int) -> dict:
    cfg = compose_for(name, batch_size)
    L.seed_everything(seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    timer = StepTimer()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[timer])
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    wall = time.perf_counter() - start
    datamodule.setup("validate")
    used, mse = distinct_codes(model, datamodule.val_dataloader())
    step_times = sorted(timer.times[5:]) or sorted(timer.times)
    return {
        "quantizer": name, "val_mse": mse,
        "distinct_codes": used if model.quantizer.integer_codes else None,
        "quantizer_params": sum(p.numel() for p in model.quantizer.parameters())
        + sum(b.numel() for b in model.quantizer.buffers()),
        "step_ms_median": 1000 * step_times[len(step_times) // 2], "train_wall_s": wall,
    }


def step_overhead(names: list[str], batch_size: int, steps: int, seed: int) -> list[dict]:
    """Training-step time of each bottleneck in the same autoencoder, steps interleaved.

    All models see the same photo batches, one step each in turn, so machine noise hits them
    alike; the medians are compared with ``identity``.
    """
    torch.manual_seed(seed)
    cfg = compose_for("identity", batch_size)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    batches = [x for x, _ in zip((b[0] for b in datamodule.train_dataloader()), range(steps))]
    models, opts = {}, {}
    for name in names:
        model = instantiate(compose_for(name, batch_size).model)
        models[name] = model.train()
        opts[name] = model.configure_optimizers()
    times: dict[str, list[float]] = {n: [] for n in names}
    for x in batches:
        for name in names:
            t = time.perf_counter()
            x_hat, out = models[name](x)
            loss = torch.nn.functional.mse_loss(x_hat, x) + out.loss
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
            times[name].append(time.perf_counter() - t)
    med = {n: sorted(v[3:])[len(v[3:]) // 2] for n, v in times.items()}
    base = med.get("identity", med[names[0]])
    return [{"quantizer": n, "step_ms_median": 1000 * med[n], "ratio_vs_identity": med[n] / base}
            for n in names]


def quantizer_cost(num_vectors: int, repeats: int) -> list[dict]:
    """Forward+backward time of the bottleneck alone on (num_vectors, 64) latents."""
    rows = []
    z0 = torch.randn(num_vectors, 64)
    for name in ["identity", "llvq", "vq"]:
        q = build(name, dim=64, **({} if name == "identity" else {"codebook_size": 512}))
        times = []
        for _ in range(repeats + 1):
            z = z0.clone().requires_grad_(True)
            t = time.perf_counter()
            out = q(z)
            (out.z_q.square().mean() + out.loss).backward()
            times.append(time.perf_counter() - t)
        rows.append({"quantizer": name, "fwd_bwd_ms": 1000 * sorted(times[1:])[len(times[1:]) // 2]})
    base = next(r["fwd_bwd_ms"] for r in rows if r["quantizer"] == "vq")
    for r in rows:
        r["ratio_vs_vq"] = r["fwd_bwd_ms"] / base
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps per model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quantizers", nargs="+", default=DEFAULT,
                        help="registered quantizer names (default: %(default)s)")
    parser.add_argument("--plugins", nargs="+", default=[], metavar="MODULE",
                        help="plain modules to import (entry-point plugins load anyway)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="config overrides: NAME:KEY=VALUE for one quantizer's model, "
                             "KEY=VALUE for every model")
    parser.add_argument("--no-save", action="store_true",
                        help="print the tables only; leave bench/results/ae_compare.json as is")
    parser.add_argument("--vectors", type=int, default=65_536)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--overhead-steps", type=int, default=100,
                        help="interleaved training steps per model for the overhead ratio")
    args = parser.parse_args()
    load_plugins(args.plugins)
    unknown = [n for n in args.quantizers if n not in list_quantizers()]
    if unknown:
        parser.error(f"unknown quantizer(s) {unknown}; registered: {', '.join(list_quantizers())}")
    for item in args.overrides:
        scope, sep, override = item.partition(":")
        EXTRA.append((scope, override) if sep and "=" not in scope else (None, item))

    rows = []
    for name in args.quantizers:
        print(f"training {name} for {args.steps} steps ...", flush=True)
        rows.append(train_one(name, args.steps, args.batch_size, args.seed))
    ident = next((r for r in rows if r["quantizer"] == "identity"), None)
    for r in rows:
        r["step_vs_identity"] = r["step_ms_median"] / ident["step_ms_median"] if ident else None
    cost = quantizer_cost(args.vectors, args.repeats)
    overhead = step_overhead(args.quantizers, args.batch_size, args.overhead_steps, args.seed)

    print(markdown_table(rows, ["quantizer", "val_mse", "distinct_codes", "quantizer_params",
                                "step_ms_median", "step_vs_identity", "train_wall_s"]))
    print()
    print(markdown_table(cost, ["quantizer", "fwd_bwd_ms", "ratio_vs_vq"]))
    print()
    print(markdown_table(overhead, ["quantizer", "step_ms_median", "ratio_vs_identity"]))
    if args.no_save:
        return
    path = write_result("ae_compare", {"settings": vars(args), "training": rows,
                                        "quantizer_cost": cost, "step_overhead": overhead})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

"""``llvq-export``: encode a whole dataset split with a trained autoencoder, for a prior.

``llvq-export CKPT --out DIR`` (or ``python -m llvq.export``) loads the outside plugins, reads
the autoencoder checkpoint (``weights_only=True``; only ``_target_`` s of llvq and of loaded
plugins, :mod:`llvq.checkpoints`), builds the data split, encodes it in order and writes an
export directory (``codes.safetensors``, ``quantizer.safetensors``, ``manifest.json``).

The format itself (writing, reading, checksums) is :mod:`llvq.codes_format`, which library
code imports directly; its names are re-exported here for scripts and notebooks::

    from llvq.export import load_export, load_autoencoder, decode_export
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from llvq.checkpoints import load_checkpoint
from llvq.cli import config_dir
from llvq.codes_format import (
    CodeExport,
    ExportIntegrityError,
    decode_export,
    export_codes,
    load_export,
    prepare_out_dir,
    read_manifest,
    write_export,
)
from llvq.modules.autoencoder import load_autoencoder
from llvq.plugins import load_plugins
from llvq.runner import instantiate

__all__ = ["SPLITS", "CodeExport", "ExportIntegrityError", "build_parser", "data_config",
           "decode_export", "export_codes", "load_autoencoder", "load_checkpoint", "load_export",
           "main", "read_manifest", "run_cli", "run_plugins", "split_loader", "write_export"]

SPLITS = ("train", "val", "test")


def data_config(data: str | None, checkpoint: Path, overrides: list[str]) -> dict[str, Any]:
    """The data config to encode: a group name, a YAML file, or the checkpoint's own run config.

    Args:
        data: ``configs/data/<name>.yaml`` by name, a path to a YAML file (a data config, or a
            run's ``.hydra/config.yaml``), or None for ``<run>/.hydra/config.yaml`` next to the
            checkpoint.
        checkpoint: the checkpoint path (``<run>/checkpoints/x.ckpt``).
        overrides: ``data.key=value`` (or ``paths.key=value``) dot-list overrides.
    """
    if data is None:
        source = checkpoint.resolve().parent.parent / ".hydra" / "config.yaml"
        if not source.is_file():
            raise FileNotFoundError(f"--data not given and {source} (the run's saved config) does "
                                    "not exist; pass --data <name> or --data <file.yaml>")
    elif data.endswith((".yaml", ".yml")):
        source = Path(data)
    else:
        source = config_dir() / "data" / f"{data}.yaml"
        if not source.is_file():
            names = sorted(p.stem for p in source.parent.glob("*.yaml"))
            raise ValueError(f"--data {data!r}: no such data config; choose one of {names} "
                             "or pass a YAML file")
    bad = [o for o in overrides if not o.startswith(("data.", "paths."))]
    if bad:
        raise ValueError(f"overrides must look like data.key=value or paths.key=value, got {bad}")
    node = OmegaConf.load(source)
    root = OmegaConf.create({"paths": {"root_dir": ".", "data_dir": "${paths.root_dir}/data"}})
    if "data" in node and "_target_" not in node:  # a run's full config
        raw = OmegaConf.to_container(node.get("paths", {}), resolve=False)
        for key in ("root_dir", "data_dir"):
            if key in raw:
                root.paths[key] = raw[key]
        node = node.data
    root.data = node
    root = OmegaConf.merge(root, OmegaConf.from_dotlist(overrides))
    return OmegaConf.to_container(root.data, resolve=True)  # type: ignore[return-value]


def run_plugins(checkpoint: Path) -> list[str]:
    """The config key ``plugins`` of the checkpoint's run (``<run>/.hydra/config.yaml``), if any."""
    source = checkpoint.resolve().parent.parent / ".hydra" / "config.yaml"
    if not source.is_file():
        return []
    return list(OmegaConf.load(source).get("plugins") or [])


def split_loader(datamodule: Any, split: str, batch_size: int | None) -> DataLoader:
    """An unshuffled loader over the datamodule's ``split`` dataset."""
    datamodule.setup("fit" if split == "train" else split if split == "test" else "validate")
    dataset = getattr(datamodule, f"{split}_set", None)
    if dataset is None:
        raise ValueError(f"{type(datamodule).__name__} has no `{split}_set`; choose another "
                         f"--split from {SPLITS}")
    return DataLoader(dataset, batch_size=batch_size or getattr(datamodule, "batch_size", 64),
                      shuffle=False, num_workers=getattr(datamodule, "num_workers", 0))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llvq-export",
        description="Encode a whole dataset split with a trained llvq autoencoder and write "
                    "codes.safetensors, quantizer.safetensors and manifest.json for a prior.",
        epilog="example: llvq-export logs/train/runs/<time>/checkpoints/last.ckpt --out "
               "exports/photos --split train data.train_samples=8192")
    parser.add_argument("checkpoint", type=Path, help="autoencoder .ckpt written by train.py")
    parser.add_argument("--out", type=Path, required=True,
                        help="export directory to write (one that already holds an export is "
                             "refused unless --force)")
    parser.add_argument("--force", action="store_true",
                        help="replace an export already in --out")
    parser.add_argument("--data", default=None,
                        help="data config: a name from configs/data (photos, digits, ...), a "
                             "YAML file, or omitted for the checkpoint run's .hydra/config.yaml")
    parser.add_argument("--split", choices=SPLITS, default="train",
                        help="dataset split to encode (default: train)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="encoding batch size (default: the data config's)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--plugins", nargs="+", default=[], metavar="MODULE",
                        help="plain modules to import first (as the config key `plugins`); "
                             "entry points of the llvq.plugins group and the run's own "
                             "`plugins` are loaded anyway")
    parser.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE",
                        help="overrides of the data config")
    return parser


def run_cli(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point of ``llvq-export``; returns the manifest."""
    args = build_parser().parse_intermixed_args(argv)
    # before the checkpoint is read: its quantizer (or data) may come from a plugin
    load_plugins([*run_plugins(args.checkpoint), *args.plugins])
    if not args.checkpoint.exists():  # a folder: read_checkpoint says so
        raise FileNotFoundError(f"checkpoint {args.checkpoint} does not exist")
    prepare_out_dir(args.out, args.force)  # before the model is loaded and the split encoded
    model = load_autoencoder(args.checkpoint, args.device)
    data_cfg = data_config(args.data, args.checkpoint, args.overrides)
    loader = split_loader(instantiate(OmegaConf.create(data_cfg)), args.split, args.batch_size)
    info = {"checkpoint": str(args.checkpoint.resolve()), "split": args.split, "data": data_cfg}
    manifest = export_codes(model, loader, args.out, info, progress=not args.no_progress,
                            overwrite=args.force)
    c = manifest["counts"]
    print(f"wrote {manifest['num_samples']} samples of codes {manifest['code_shape']} to "
          f"{args.out}: {int(c['distinct'])} distinct codes, {c['entropy_bits']:.3f} bits per "
          f"latent vector, vocabulary {manifest['vocabulary']['size']}", file=sys.stderr)
    return manifest


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: exit 0 on success; a bad input prints one line and exits 1.

    ``LLVQ_TRACEBACK=1`` shows the full traceback instead.
    """
    try:
        run_cli(argv)
    except (OSError, ValueError) as err:
        if os.environ.get("LLVQ_TRACEBACK"):
            raise
        print(f"llvq-export: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

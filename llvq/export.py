"""Export the integer codes of a whole dataset split, for training a prior, and load them back.

``llvq-export CKPT --out DIR`` (or ``python -m llvq.export``) encodes every image of a split
with a trained autoencoder and writes three files to ``DIR``:

``codes.safetensors``
    ``codes`` ``(N, h, w)`` indices or ``(N, h, w, D)`` lattice coordinates; ``tokens``
    ``(N, h, w)``: each latent vector's id in the vocabulary; ``vocab`` ``(V,)`` or
    ``(V, D)``: the code of each token id (``codes == vocab[tokens]``); ``vocab_counts`` ``(V,)``;
    ``labels`` ``(N,)`` where the data has labels. Integers are stored in the narrowest signed
    dtype that holds them (the manifest's ``stored_dtypes``); :func:`load_export` returns int64.
``quantizer.safetensors``
    the quantizer's state dict: everything needed to decode codes to latents (codebook,
    basis, generator, scale).
``manifest.json``
    quantizer name and config, code shape and dtype, the vocabulary's size and order, usage
    counts (distinct codes, entropy in bits per latent vector), the checkpoint and data
    config it came from, and the sha256 of each file.

The vocabulary of a lattice bottleneck holds the lattice points actually used, most frequent
first, so a categorical prior can model them; for a finite codebook the tokens are the indices.
:func:`load_export` verifies the checksums and refuses a modified file. Checkpoints are read
with ``torch.load(weights_only=True)`` and may only name ``llvq.*`` classes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from rich.progress import track
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader

from llvq.callbacks.code_counter import usage_stats
from llvq.quantizers import Quantizer, build

__all__ = ["CodeExport", "ExportIntegrityError", "decode_export", "export_codes",
           "load_autoencoder", "load_checkpoint", "load_export", "main"]

FORMAT, VERSION = "llvq-codes", 1
CODES, QUANTIZER, MANIFEST = "codes.safetensors", "quantizer.safetensors", "manifest.json"
SPLITS = ("train", "val", "test")


class ExportIntegrityError(ValueError):
    """An exported file is missing or its sha256 differs from the manifest's."""


# --- checkpoints -----------------------------------------------------------------------------
def _check_targets(node: Any, where: str) -> None:
    """Refuse a checkpoint whose configs would instantiate anything outside ``llvq``."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not str(target).startswith("llvq."):
            raise ValueError(f"{where}: refusing to instantiate _target_={target!r} from a "
                             "checkpoint; only llvq.* classes are rebuilt from checkpoints")
        for key, value in node.items():
            _check_targets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_targets(value, f"{where}[{i}]")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint read with ``weights_only=True`` (tensors and plain data only).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not a Lightning checkpoint with ``state_dict`` and ``hyper_parameters``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass a .ckpt written by "
                                "train.py (e.g. logs/<task>/runs/<time>/checkpoints/last.ckpt)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or not {"state_dict", "hyper_parameters"} <= ckpt.keys():
        raise ValueError(f"{path} is not a Lightning checkpoint of an llvq module (it needs "
                         "`state_dict` and `hyper_parameters`)")
    _check_targets(ckpt["hyper_parameters"], f"{path.name}:hyper_parameters")
    return ckpt


def load_autoencoder(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Rebuild an :class:`~llvq.modules.AutoencoderModule` from its checkpoint, in eval mode."""
    from llvq.modules import AutoencoderModule

    ckpt = load_checkpoint(path)
    model = AutoencoderModule(**ckpt["hyper_parameters"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(map_location).eval()


# --- writing ---------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _vocabulary(codes: Tensor, quantizer: Quantizer) -> tuple[Tensor, Tensor, Tensor]:
    """``(tokens (N, h, w), vocab (V,) | (V, D), counts (V,))`` with ``codes == vocab[tokens]``."""
    if not quantizer.vector_codes:
        size = int(getattr(quantizer, "codebook_size", int(codes.max()) + 1))
        return codes.clone(), torch.arange(size), torch.bincount(codes.reshape(-1), minlength=size)
    rows, inverse, counts = torch.unique(codes.reshape(-1, codes.shape[-1]), dim=0,
                                         return_inverse=True, return_counts=True)
    order = torch.argsort(counts, descending=True, stable=True)  # most frequent first
    token_of = torch.empty_like(order)
    token_of[order] = torch.arange(order.numel())
    return token_of[inverse].view(codes.shape[:-1]), rows[order], counts[order]


@torch.no_grad()
def _narrow(t: Tensor) -> Tensor:
    """``t`` in the smallest signed integer dtype that holds its values (stored size only)."""
    if t.numel() == 0:
        return t
    lo, hi = int(t.min()), int(t.max())
    for dtype in (torch.int8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return t.to(dtype)
    return t


def export_codes(model: Any, loader: DataLoader, out_dir: str | Path,
                 info: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Encode every batch of ``loader`` and write the three export files to ``out_dir``.

    Args:
        model: an autoencoder with ``encode(x)`` and a ``quantizer`` with integer codes.
        loader: an unshuffled loader of ``(x, y)`` batches.
        out_dir: the export directory (created; existing export files are overwritten).
        info: extra provenance recorded in the manifest (checkpoint, data config, split).
        progress: show a progress bar.

    Returns:
        The manifest.
    """
    q: Quantizer = model.quantizer
    if not q.integer_codes:
        raise ValueError(f"quantizer '{q.name}' has no integer codes (its codes are the float "
                         "latents); train with a quantizing bottleneck to export codes")
    device = next(model.parameters()).device
    codes, labels = [], []
    for batch in track(loader, description="encoding", disable=not progress):
        x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        codes.append(model.encode(x.to(device)).cpu())  # (B, h, w[, D])
        labels.append(torch.full((x.shape[0],), -1) if y is None else y.to(torch.int64).cpu())
    if not codes:
        raise ValueError("the data split is empty: nothing to export")
    all_codes, all_labels = torch.cat(codes), torch.cat(labels)  # (N, h, w[, D]), (N,)
    tokens, vocab, counts = _vocabulary(all_codes, q)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # integers are stored in the narrowest dtype that holds them; load_export returns int64
    tensors = {"codes": _narrow(all_codes), "tokens": _narrow(tokens), "vocab": _narrow(vocab),
               "vocab_counts": counts}
    if bool((all_labels >= 0).any()):
        tensors["labels"] = all_labels
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / CODES))
    save_file({k: v.detach().cpu().contiguous() for k, v in q.state_dict().items()},
              str(out / QUANTIZER))

    config = {k: v for k, v in dict(getattr(model, "hparams", {}).get("quantizer") or {}).items()
              if k != "_target_"}
    config.setdefault("name", q.name)
    config.setdefault("dim", q.dim)
    manifest = {
        "format": FORMAT, "version": VERSION,
        "quantizer": {"name": q.name, "config": config, "vector_codes": q.vector_codes},
        "code_shape": list(all_codes.shape[1:]), "grid": list(tokens.shape[1:]),
        "code_dim": q.dim if q.vector_codes else None, "dtype": "int64",
        "stored_dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in tensors.items()},
        "num_samples": int(all_codes.shape[0]), "has_labels": "labels" in tensors,
        "vocabulary": {"size": int(vocab.shape[0]), "tensor": "vocab", "counts": "vocab_counts",
                       "order": "most frequent first" if q.vector_codes else "codebook index"},
        "counts": {"latent_vectors": int(tokens.numel()),
                   **{k: v for k, v in usage_stats(counts, None if q.vector_codes else
                                                   int(vocab.shape[0])).items()
                      if k != "vectors"}},
        "batch_size": loader.batch_size,
        **(info or {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": {name: {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
                  for name in (CODES, QUANTIZER)},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# --- reading ---------------------------------------------------------------------------------
@dataclass
class CodeExport:
    """An export directory, loaded and verified.

    Attributes:
        path: the directory.
        manifest: the parsed ``manifest.json``.
        codes: ``(N, h, w)`` or ``(N, h, w, D)`` int64 codes.
        tokens: ``(N, h, w)`` int64 vocabulary ids.
        vocab: ``(V,)`` or ``(V, D)``: the code of each token id.
        vocab_counts: ``(V,)`` occurrences of each token.
        labels: ``(N,)`` int64, -1 where the data has none.
        quantizer_state: the quantizer's state dict.
    """

    path: Path
    manifest: dict[str, Any]
    codes: Tensor
    tokens: Tensor
    vocab: Tensor
    vocab_counts: Tensor
    labels: Tensor
    quantizer_state: dict[str, Tensor]

    def quantizer(self) -> Quantizer:
        """The quantizer rebuilt from the manifest's config and ``quantizer.safetensors`` (eval)."""
        q = build(**self.manifest["quantizer"]["config"])
        q.load_state_dict(self.quantizer_state)
        return q.eval()


def read_manifest(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Parse ``manifest.json`` of an export directory and (by default) verify every checksum.

    Raises:
        FileNotFoundError: no manifest in ``path``.
        ExportIntegrityError: a file is missing or its sha256 differs from the manifest's.
    """
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(f"{path} holds no {MANIFEST}; point data.path (or --export) at "
                                "a directory written by llvq-export")
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ExportIntegrityError(f"{path / MANIFEST} is not an {FORMAT} v{VERSION} manifest")
    if verify:
        for name, entry in manifest["files"].items():
            file = path / name
            if not file.is_file():
                raise ExportIntegrityError(f"{file} is missing; the export is incomplete, "
                                           "re-run llvq-export")
            actual = sha256_file(file)
            if actual != entry["sha256"]:
                raise ExportIntegrityError(
                    f"{file} does not match its manifest: sha256 {actual} != {entry['sha256']} "
                    "recorded at export; the file was modified or corrupted, re-run llvq-export")
    return manifest


def load_export(path: str | Path, verify: bool = True) -> CodeExport:
    """Load an export directory written by :func:`export_codes`, verifying its checksums."""
    path = Path(path)
    manifest = read_manifest(path, verify)
    t = {k: v.to(torch.int64) for k, v in load_file(str(path / CODES)).items()}  # see _narrow
    labels = t.get("labels", torch.full((t["codes"].shape[0],), -1, dtype=torch.int64))
    return CodeExport(path, manifest, t["codes"], t["tokens"], t["vocab"], t["vocab_counts"],
                      labels, load_file(str(path / QUANTIZER)))


@torch.no_grad()
def decode_export(model: Any, export: CodeExport, batch_size: int | None = None) -> Tensor:
    """Images ``(N, C, H, W)`` decoded from the exported codes through ``model.decode``.

    Decoding runs in the export's batches (``batch_size`` from the manifest), so a dithered
    lattice sees the same dither and the result equals the model's reconstructions exactly.
    """
    size = batch_size or export.manifest.get("batch_size") or 64
    device = next(model.parameters()).device
    return torch.cat([model.decode(c.to(device)).cpu() for c in export.codes.split(size)])


# --- command line ----------------------------------------------------------------------------
def data_config(data: str | None, checkpoint: Path, overrides: list[str]) -> dict[str, Any]:
    """The data config to encode: a group name, a YAML file, or the checkpoint's own run config.

    Args:
        data: ``configs/data/<name>.yaml`` by name, a path to a YAML file (a data config, or a
            run's ``.hydra/config.yaml``), or None for ``<run>/.hydra/config.yaml`` next to the
            checkpoint.
        checkpoint: the checkpoint path (``<run>/checkpoints/x.ckpt``).
        overrides: ``data.key=value`` (or ``paths.key=value``) dot-list overrides.
    """
    from llvq.cli import config_dir

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
    parser.add_argument("--out", type=Path, required=True, help="export directory to write")
    parser.add_argument("--data", default=None,
                        help="data config: a name from configs/data (photos, digits, ...), a "
                             "YAML file, or omitted for the checkpoint run's .hydra/config.yaml")
    parser.add_argument("--split", choices=SPLITS, default="train",
                        help="dataset split to encode (default: train)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="encoding batch size (default: the data config's)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE",
                        help="overrides of the data config")
    return parser


def run_cli(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point of ``llvq-export``; returns the manifest."""
    from llvq.runner import instantiate

    args = build_parser().parse_intermixed_args(argv)
    model = load_autoencoder(args.checkpoint, args.device)
    data_cfg = data_config(args.data, args.checkpoint, args.overrides)
    loader = split_loader(instantiate(OmegaConf.create(data_cfg)), args.split, args.batch_size)
    info = {"checkpoint": str(args.checkpoint.resolve()), "split": args.split, "data": data_cfg}
    manifest = export_codes(model, loader, args.out, info, progress=not args.no_progress)
    c = manifest["counts"]
    print(f"wrote {manifest['num_samples']} samples of codes {manifest['code_shape']} to "
          f"{args.out}: {int(c['distinct'])} distinct codes, {c['entropy_bits']:.3f} bits per "
          f"latent vector, vocabulary {manifest['vocabulary']['size']}", file=sys.stderr)
    return manifest


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (returns None so the exit status is 0)."""
    run_cli(argv)


if __name__ == "__main__":
    main()

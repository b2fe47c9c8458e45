"""The code export format: write, read and verify ``codes`` + vocabulary + manifest + checksums.

An export directory (written by ``llvq-export``, :mod:`llvq.export`) holds three files:

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
    counts (distinct codes, entropy in bits per latent vector), the provenance it was given
    (checkpoint, data config, split), and the sha256 of each file.

The vocabulary of a lattice bottleneck holds the lattice points actually used, most frequent
first, so a categorical prior can model them; for a finite codebook the tokens are the indices.
:func:`load_export` verifies the checksums and refuses a modified file.

This module works through the quantizer contract alone (``model.encode``/``decode``,
``model.quantizer``) and imports nothing of llvq above :mod:`llvq.quantizers`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.progress import track
from safetensors.torch import load_file, save_file
from torch import Tensor

from llvq.code_stats import usage_stats
from llvq.hashing import sha256_file
from llvq.quantizers.base import Quantizer
from llvq.quantizers.registry import build

__all__ = ["CODES", "FORMAT", "MANIFEST", "QUANTIZER", "VERSION", "CodeExport",
           "ExportIntegrityError", "decode_export", "export_codes", "load_export",
           "read_manifest", "write_export"]

FORMAT, VERSION = "llvq-codes", 1
CODES, QUANTIZER, MANIFEST = "codes.safetensors", "quantizer.safetensors", "manifest.json"


class ExportIntegrityError(ValueError):
    """An exported file is missing or its sha256 differs from the manifest's."""


# --- writing ---------------------------------------------------------------------------------
def _vocabulary(codes: Tensor, quantizer: Quantizer) -> tuple[Tensor, Tensor, Tensor]:
    """``(tokens (N, h, w), vocab (V,) | (V, D), counts (V,))`` with ``codes == vocab[tokens]``."""
    if not quantizer.vector_codes:
        size = quantizer.codebook_size or int(codes.max()) + 1
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


def write_export(out_dir: str | Path, codes: Tensor, labels: Tensor | None, quantizer: Quantizer,
                 config: dict[str, Any] | None = None, info: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Write the three export files for codes already computed; return the manifest.

    Args:
        out_dir: the export directory (created; existing export files are overwritten).
        codes: ``(N, h, w)`` indices or ``(N, h, w, D)`` lattice coordinates (integers).
        labels: ``(N,)`` int64, -1 where there is none; ``None`` for no labels.
        quantizer: the quantizer that made the codes (its state dict is saved).
        config: the quantizer's constructor options (``name`` and ``dim`` are added).
        info: extra provenance recorded in the manifest (checkpoint, data config, split,
            batch size).
    """
    q = quantizer
    if not q.integer_codes:
        raise ValueError(f"quantizer '{q.name}' has no integer codes (its codes are the float "
                         "latents); train with a quantizing bottleneck to export codes")
    codes = codes.to(torch.int64)
    tokens, vocab, counts = _vocabulary(codes, q)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # integers are stored in the narrowest dtype that holds them; load_export returns int64
    tensors = {"codes": _narrow(codes), "tokens": _narrow(tokens), "vocab": _narrow(vocab),
               "vocab_counts": counts}
    if labels is not None and bool((labels >= 0).any()):
        tensors["labels"] = labels.to(torch.int64)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / CODES))
    save_file({k: v.detach().cpu().contiguous() for k, v in q.state_dict().items()},
              str(out / QUANTIZER))

    config = {k: v for k, v in dict(config or {}).items() if k != "_target_"}
    config.setdefault("name", q.name)
    config.setdefault("dim", q.dim)
    stats = usage_stats(counts, None if q.vector_codes else int(vocab.shape[0]))
    manifest = {
        "format": FORMAT, "version": VERSION,
        "quantizer": {"name": q.name, "config": config, "vector_codes": q.vector_codes},
        "code_shape": list(codes.shape[1:]), "grid": list(tokens.shape[1:]),
        "code_dim": q.dim if q.vector_codes else None, "dtype": "int64",
        "stored_dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in tensors.items()},
        "num_samples": int(codes.shape[0]), "has_labels": "labels" in tensors,
        "vocabulary": {"size": int(vocab.shape[0]), "tensor": "vocab", "counts": "vocab_counts",
                       "order": "most frequent first" if q.vector_codes else "codebook index"},
        "counts": {"latent_vectors": int(tokens.numel()),
                   **{k: v for k, v in stats.items() if k != "vectors"}},
        **(info or {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": {name: {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
                  for name in (CODES, QUANTIZER)},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def export_codes(model: Any, loader: Iterable[Any], out_dir: str | Path,
                 info: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Encode every batch of ``loader`` and write the three export files to ``out_dir``.

    Args:
        model: an autoencoder with ``encode(x)`` and a ``quantizer`` with integer codes; its
            ``hparams["quantizer"]`` (when present) is recorded as the quantizer's config.
        loader: an unshuffled loader of ``(x, y)`` batches (its ``batch_size`` is recorded:
            :func:`decode_export` decodes in the same batches).
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
    config = dict(getattr(model, "hparams", {}).get("quantizer") or {})
    info = {"batch_size": getattr(loader, "batch_size", None), **(info or {})}
    return write_export(out_dir, torch.cat(codes), torch.cat(labels), q, config, info)


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
        """The quantizer rebuilt from the manifest's config and ``quantizer.safetensors`` (eval).

        The name is looked up in the quantizer registry, which loads the outside plugins
        once when it does not know it, so a plugin quantizer's export reloads too.
        """
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
    """Load an export directory written by :func:`write_export`, verifying its checksums."""
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

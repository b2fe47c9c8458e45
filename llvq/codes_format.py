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
    (checkpoint, data config, split), the sha256 of each file, and ``manifest_sha256``: the
    sha256 of the manifest's own canonical JSON (sorted keys, without that field), so an edit
    of the manifest itself (its quantizer config, or its checksum list) is refused too.

The vocabulary of a lattice bottleneck holds the lattice points actually used, most frequent
first, so a categorical prior can model them; for a finite codebook the tokens are the indices.
:func:`load_export` verifies the checksums and refuses a modified file, a manifest without
checksums and a damaged manifest, naming the file. The checksums detect corruption and edits;
they are not a signature (whoever rewrites a file can rewrite the checksums too).

This module works through the quantizer contract alone (``model.encode``/``decode``,
``model.quantizer``) and imports nothing of llvq above :mod:`llvq.quantizers`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from llvq.code_stats import usage_stats
from llvq.hashing import sha256_file, sha256_json
from llvq.progress import track
from llvq.quantizers.base import Quantizer
from llvq.quantizers.registry import build

__all__ = ["CODES", "FORMAT", "MANIFEST", "MANIFEST_DIGEST", "QUANTIZER", "VERSION",
           "CodeExport", "ExportExistsError", "ExportIntegrityError", "decode_export",
           "export_codes", "load_export", "manifest_digest", "prepare_out_dir", "read_manifest",
           "write_export"]

FORMAT, VERSION = "llvq-codes", 1
CODES, QUANTIZER, MANIFEST = "codes.safetensors", "quantizer.safetensors", "manifest.json"
MANIFEST_DIGEST = "manifest_sha256"  # the manifest's own checksum, kept inside it


class ExportIntegrityError(ValueError):
    """An exported file is missing, damaged, or its sha256 differs from the manifest's."""


class ExportExistsError(FileExistsError):
    """The output directory already holds an export (replace it only when asked to)."""


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON, leaving out the ``manifest_sha256`` field."""
    return sha256_json({k: v for k, v in manifest.items() if k != MANIFEST_DIGEST})


def prepare_out_dir(out_dir: str | Path, overwrite: bool = False, setting: str = "--out") -> Path:
    """Check (and create) an export directory before any work is done.

    Args:
        out_dir: the export directory.
        overwrite: replace an export already there (``llvq-export --force``).
        setting: how the directory is named in errors.

    Raises:
        ExportExistsError: it already holds export files and ``overwrite`` is false.
        NotADirectoryError: it (or a parent) is a file.
        PermissionError: it cannot be created or written to (the cause is named).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{setting} {out} is a file, not a directory; choose a "
                                 "directory for the export")
    held = [name for name in (MANIFEST, CODES, QUANTIZER) if (out / name).exists()]
    if held and not overwrite:
        raise ExportExistsError(f"{setting} {out} already holds an export ({', '.join(held)}); "
                                "choose another directory, or pass --force (overwrite=True) to "
                                "replace it")
    probe = out / f".llvq-write-test-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        if isinstance(err, (NotADirectoryError, FileExistsError)):
            raise NotADirectoryError(f"{setting} {out} cannot be created: a part of the path is "
                                     f"a file ({err.strerror or err})") from err
        raise PermissionError(f"{setting} {out} is not writable: {err.strerror or err}; choose "
                              "a writable directory") from err
    return out


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
                 config: dict[str, Any] | None = None, info: dict[str, Any] | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Write the three export files for codes already computed; return the manifest.

    Args:
        out_dir: the export directory (created; one that already holds an export is refused
            unless ``overwrite``).
        codes: ``(N, h, w)`` indices or ``(N, h, w, D)`` lattice coordinates (integers).
        labels: ``(N,)`` int64, -1 where there is none; ``None`` for no labels.
        quantizer: the quantizer that made the codes (its state dict is saved).
        config: the quantizer's constructor options (``name`` and ``dim`` are added).
        info: extra provenance recorded in the manifest (checkpoint, data config, split,
            batch size).
        overwrite: replace an export already in ``out_dir``.
    """
    q = quantizer
    if not q.integer_codes:
        raise ValueError(f"quantizer '{q.name}' has no integer codes (its codes are the float "
                         "latents); train with a quantizing bottleneck to export codes")
    codes = codes.to(torch.int64)
    tokens, vocab, counts = _vocabulary(codes, q)
    out = prepare_out_dir(out_dir, overwrite)
    (out / MANIFEST).unlink(missing_ok=True)  # a half-replaced export must not verify
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
    manifest[MANIFEST_DIGEST] = manifest_digest(manifest)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def export_codes(model: Any, loader: Iterable[Any], out_dir: str | Path,
                 info: dict[str, Any] | None = None, progress: bool = True,
                 overwrite: bool = False) -> dict[str, Any]:
    """Encode every batch of ``loader`` and write the three export files to ``out_dir``.

    Args:
        model: an autoencoder with ``encode(x)`` and a ``quantizer`` with integer codes; its
            ``hparams["quantizer"]`` (when present) is recorded as the quantizer's config.
        loader: an unshuffled loader of ``(x, y)`` batches (its ``batch_size`` is recorded:
            :func:`decode_export` decodes in the same batches).
        out_dir: the export directory (created; checked before encoding: one that already
            holds an export is refused unless ``overwrite``, and it must be writable).
        info: extra provenance recorded in the manifest (checkpoint, data config, split).
        progress: show a progress bar.
        overwrite: replace an export already in ``out_dir``.

    Returns:
        The manifest.
    """
    q: Quantizer = model.quantizer
    if not q.integer_codes:
        raise ValueError(f"quantizer '{q.name}' has no integer codes (its codes are the float "
                         "latents); train with a quantizing bottleneck to export codes")
    prepare_out_dir(out_dir, overwrite)  # before the (long) encoding
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
    return write_export(out_dir, torch.cat(codes), torch.cat(labels), q, config, info,
                        overwrite)


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

    Verification checks the manifest's own checksum (``manifest_sha256``) first, so an edited
    manifest, or one whose checksums were removed, is refused; then each file's sha256.

    Raises:
        FileNotFoundError: no manifest in ``path``.
        ExportIntegrityError: the manifest is damaged (not JSON, not an llvq-codes manifest),
            carries no checksums or differs from its own checksum, or a file is missing or its
            sha256 differs from the manifest's; the message names the file.
    """
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        raise FileNotFoundError(f"{path} holds no {MANIFEST}; point data.path (or --export) at "
                                "a directory written by llvq-export")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportIntegrityError(f"{file} is damaged (not valid JSON: {err}); re-run "
                                   "llvq-export") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or manifest.get("version") != VERSION:
        raise ExportIntegrityError(f"{file} is not an {FORMAT} v{VERSION} manifest")
    if not verify:
        return manifest
    recorded = manifest.get(MANIFEST_DIGEST)
    files = manifest.get("files")
    if not recorded or not isinstance(files, dict) \
            or not all(isinstance(files.get(n), dict) and files[n].get("sha256")
                       for n in (CODES, QUANTIZER)):
        raise ExportIntegrityError(f"{file} carries no checksums (`{MANIFEST_DIGEST}` and "
                                   f"`files.*.sha256` for {CODES} and {QUANTIZER}); it cannot "
                                   "be verified: re-run llvq-export")
    actual = manifest_digest(manifest)
    if actual != recorded:
        raise ExportIntegrityError(f"{file} was modified after export: its content's sha256 "
                                   f"{actual} != {MANIFEST_DIGEST} {recorded}; re-run "
                                   "llvq-export")
    for name, entry in files.items():
        target = path / name
        if not target.is_file():
            raise ExportIntegrityError(f"{target} is missing; the export is incomplete, "
                                       "re-run llvq-export")
        actual = sha256_file(target)
        if actual != entry["sha256"]:
            raise ExportIntegrityError(
                f"{target} does not match its manifest: sha256 {actual} != {entry['sha256']} "
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

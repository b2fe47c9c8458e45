"""Export a GLVQ-quantized model and load it back (``save_quantized`` / ``load_quantized``).

Layout of an export directory::

    quantized.safetensors   per quantized layer L:
                              L.codes      uint8, the codes bit-packed group by group, each
                                           group at its own width (little-endian bit order,
                                           byte-aligned per group)
                              L.bits       uint8 (M,)   bit width per group (low 7 bits),
                                           + 128 where the group uses µ-law
                              L.generator  float16 (M, d, d), rows = basis vectors
                              L.mu         float16 (C,) µ of the C companding groups
                              L.scale      float16 (M,)
                              L.row_scale  float16 (out,) (only with row scaling)
    rest.safetensors        every other tensor of the model (embeddings, norms, head) as-is
    config.json             the model's Hugging Face config
    tokenizer/              the tokenizer
    manifest.json           format, source model, settings, per-layer shapes, bit widths and
                            errors (and rotation seeds with incoherence processing, and
                            ``"code": "e8p"`` for layers coded with E8P: their codes are the
                            16-bit E8P indices as 8 base-4 digits, 2 bits each),
                            effective bits, a size report, the sha256 of each file
                            (tokenizer files included) and its own (manifest_sha256)

``load_quantized`` rebuilds the model from its config, fills the unquantized tensors, and sets
every quantized weight to its dequantization from codes and side information, so the loaded
weights equal the ones the quantizer produced bit for bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from llvq.hashing import sha256_file, sha256_json
from llvq.llm.groups import LayerResult, dequantize
from llvq.llm.incoherence import unrotate
from llvq.llm.models import decoder_blocks, forward_without_cache, load_tokenizer

__all__ = ["FORMAT", "load_quantized", "pack_bits", "save_quantized", "unpack_bits"]

FORMAT = "llvq-glvq/1"
QUANT, REST, CONFIG, MANIFEST, TOKENIZER = ("quantized.safetensors", "rest.safetensors",
                                            "config.json", "manifest.json", "tokenizer")
MANIFEST_DIGEST = "manifest_sha256"


def pack_bits(values: Tensor, bits: int) -> Tensor:
    """Pack unsigned integers ``< 2^bits`` into bytes (little-endian bit order)."""
    v = values.reshape(-1).to(torch.int64)
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= 2**bits):
        raise ValueError(f"values out of range for {bits} bits")
    shifts = torch.arange(bits, dtype=torch.int64)
    flat = ((v[:, None] >> shifts) & 1).reshape(-1)
    pad = (-flat.numel()) % 8
    flat = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, 8)
    return (flat << torch.arange(8, dtype=torch.int64)).sum(1).to(torch.uint8)


def unpack_bits(packed: Tensor, bits: int, count: int) -> Tensor:
    """Inverse of :func:`pack_bits`: ``count`` integers of ``bits`` bits (int64)."""
    b = (packed.to(torch.int64)[:, None] >> torch.arange(8, dtype=torch.int64)) & 1
    flat = b.reshape(-1)[: count * bits].reshape(count, bits)
    return (flat << torch.arange(bits, dtype=torch.int64)).sum(1)


def _pack_layer(res: LayerResult) -> Tensor:
    parts = [pack_bits(res.codes[g], int(res.bits[g])) for g in range(res.bits.numel())]
    return torch.cat(parts)


def _unpack_layer(packed: Tensor, bits: Tensor, vecs: int, d: int) -> Tensor:
    out, offset = [], 0
    for b in bits.tolist():
        nbytes = math.ceil(vecs * d * b / 8)
        out.append(unpack_bits(packed[offset:offset + nbytes], b, vecs * d).reshape(vecs, d))
        offset += nbytes
    if offset != packed.numel():
        raise ValueError("packed codes do not match the bit widths in the file")
    return torch.stack(out)


def save_quantized(directory: str | Path, model: nn.Module, results: dict[str, LayerResult],
                   tokenizer: Any, group_size: int, info: dict[str, Any] | None = None) -> dict:
    """Write an export directory (see the module docstring); returns the manifest.

    Args:
        directory: created if missing.
        model: the model whose quantized layers hold the dequantized weights.
        results: ``{"layers.<i>.<linear>": LayerResult}`` from :class:`llvq.llm.ptq.BlockwisePTQ`.
        tokenizer: saved next to the weights.
        group_size: the groups' width in input columns.
        info: extra manifest entries (source model, settings, metrics).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    blocks_prefix = _blocks_prefix(model)
    tensors: dict[str, Tensor] = {}
    layers: dict[str, Any] = {}
    quantized_params = set()
    code_bits = side = numel = 0
    for name, res in results.items():
        m, vecs, d = res.codes.shape
        tensors[f"{name}.codes"] = _pack_layer(res)
        tensors[f"{name}.bits"] = (res.bits + 128 * res.compand.to(torch.int64)).to(torch.uint8)
        tensors[f"{name}.generator"] = res.generator.contiguous()
        tensors[f"{name}.scale"] = res.scale.contiguous()
        if bool(res.compand.any()):
            tensors[f"{name}.mu"] = res.mu[res.compand].contiguous()
        if res.row_scale is not None:
            tensors[f"{name}.row_scale"] = res.row_scale.contiguous()
        o, i = res.weight.shape
        layers[name] = {"out_features": o, "in_features": i, "groups": m, "lattice_dim": d,
                        "vectors_per_group": vecs,
                        "compand_groups": int(res.compand.sum()),
                        "row_scale": res.row_scale is not None, "bits": res.bits.tolist(),
                        "error": res.error, "error_init": res.error_init}
        if res.code != "box":
            layers[name]["code"] = res.code
        if res.rotation_seed is not None:  # incoherence processing: U, V rebuilt from it
            layers[name]["rotation_seed"] = res.rotation_seed
        quantized_params.add(f"{blocks_prefix}.{name.removeprefix('layers.')}.weight")
        code_bits += int((res.bits * vecs * d).sum())
        numel += o * i
    save_file(tensors, str(out / QUANT))
    quant_bytes = (out / QUANT).stat().st_size
    side = quant_bytes * 8 - code_bits

    rest, aliases, seen = {}, {}, {}
    for k, v in model.state_dict().items():
        if k in quantized_params:
            continue
        key = (v.data_ptr(), v.shape, v.dtype)
        if key in seen:
            aliases[k] = seen[key]
            continue
        seen[key] = k
        rest[k] = v.detach().contiguous().cpu()
    save_file(rest, str(out / REST))
    model.config.to_json_file(str(out / CONFIG))
    tokenizer.save_pretrained(str(out / TOKENIZER))
    fp16_bytes = numel * 2
    manifest = {
        "format": FORMAT,
        "group_size": group_size,
        "blocks_prefix": blocks_prefix,
        "layers": layers,
        "aliases": aliases,
        "size": {
            "quantized_weights": numel,
            "quantized_bytes": quant_bytes,
            "fp16_bytes": fp16_bytes,
            "compression_vs_fp16": fp16_bytes / max(quant_bytes, 1),
            "bits_per_weight_file": quant_bytes * 8 / max(numel, 1),
            "code_bits_per_weight": code_bits / max(numel, 1),
            "rest_bytes": (out / REST).stat().st_size,
            "side_and_container_bits": side,
        },
        **(info or {}),
    }
    manifest["sha256"] = {f: sha256_file(out / f) for f in (QUANT, REST, CONFIG)}
    manifest["sha256"].update({p.relative_to(out).as_posix(): sha256_file(p)
                               for p in sorted((out / TOKENIZER).rglob("*")) if p.is_file()})
    manifest[MANIFEST_DIGEST] = sha256_json(manifest)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _blocks_prefix(model: nn.Module) -> str:
    blocks = decoder_blocks(model)
    for name, module in model.named_modules():
        if module is blocks:
            return name
    raise ValueError("could not locate the decoder blocks in the model")


def read_manifest(directory: str | Path) -> dict:
    """The manifest of an export, after checking it and every file against their sha256.

    The manifest carries its own checksum (``manifest_sha256``, over everything else in it), so
    an edited manifest or one whose checksums were removed is refused; then every file listed
    (weights, config and each tokenizer file) is checked.
    """
    d = Path(directory)
    path = d / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{d} is not a GLVQ export (no {MANIFEST}); create one with "
                                f"`python train.py experiment=glvq_tiny`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is damaged (not valid JSON: {err}); export the model again") \
            from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{path}: format {found!r}, expected {FORMAT!r}")
    recorded = manifest.get(MANIFEST_DIGEST)
    checksums = manifest.get("sha256")
    if not recorded or not isinstance(checksums, dict) \
            or not {QUANT, REST, CONFIG} <= set(checksums):
        raise ValueError(f"{path} carries no checksums (`{MANIFEST_DIGEST}` and `sha256` of "
                         f"{QUANT}, {REST}, {CONFIG}); it cannot be verified: export again")
    actual = sha256_json({k: v for k, v in manifest.items() if k != MANIFEST_DIGEST})
    if actual != recorded:
        raise ValueError(f"{path} was modified after export: its content's sha256 {actual} != "
                         f"{MANIFEST_DIGEST} {recorded}")
    for f, digest in checksums.items():
        if not (d / f).is_file() or sha256_file(d / f) != digest:
            raise ValueError(f"{d / f} is missing or does not match the sha256 in {MANIFEST}")
    return manifest


EMBEDDINGS = ("float32", "int8", "int4")


def _table_formats() -> dict:
    """``embeddings`` name -> (quantizer, embedding class, head class) of a stored table."""
    from llvq.llm.packed import (
        Int4Embedding,
        Int4Linear,
        Int8Embedding,
        Int8Linear,
        int4_blocks,
        int8_rows,
    )

    return {"int8": (int8_rows, Int8Embedding, Int8Linear),
            "int4": (int4_blocks, Int4Embedding, Int4Linear)}


def _store_embeddings(model: nn.Module, embeddings: str, packed: bool) -> None:
    """Keep the input embedding table and the output head (tied or not) as ``embeddings``.

    ``"int8"``: per-row symmetric int8 (:func:`llvq.llm.packed.int8_rows`, 8 bits per entry plus
    a float32 scale per row); ``"int4"``: asymmetric 4-bit codes in blocks of 32 with a float16
    scale and minimum each (:func:`llvq.llm.packed.int4_blocks`, 5 bits per entry). Packed, the
    model holds the format's embedding and head modules (:class:`~llvq.llm.packed.Int8Embedding`
    and :class:`~llvq.llm.packed.Int8Linear`, or the ``Int4`` pair) sharing one table when tied;
    not packed, the float32 weights are replaced by their round trip (the same model, for checks).
    """
    if embeddings == "float32":
        return
    from llvq.llm.packed import GLVQLinear

    quantize, embedding_cls, head_cls = _table_formats()[embeddings]
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(inp, nn.Embedding) or (out is not None and not isinstance(out, nn.Linear)):
        raise ValueError(f"load_quantized: embeddings={embeddings!r} needs an nn.Embedding input "
                         f"table and an nn.Linear head, got {type(inp).__name__} and "
                         f"{type(out).__name__}")
    tied = out is not None and out.weight.data_ptr() == inp.weight.data_ptr()
    table = quantize(inp.weight.detach())
    if out is not None:
        head = table if tied else quantize(out.weight.detach())
    if not packed:
        with torch.no_grad():
            inp.weight.copy_(embedding_cls(*table).dequantized_weight())
            if out is not None and not tied:
                out.weight.copy_(embedding_cls(*head).dequantized_weight())
        return
    model.set_input_embeddings(embedding_cls(*table, padding_idx=inp.padding_idx))
    if out is not None:
        model.set_output_embeddings(head_cls(*head, bias=out.bias))
    # the other float parameters (norms) are views of the memory-mapped export file, which
    # stays mapped, float32 table included, while any of them lives: give them their own memory
    for module in model.modules():
        if not isinstance(module, (GLVQLinear, embedding_cls, head_cls)):
            for param in module.parameters(recurse=False):
                param.data = param.data.clone()


def load_quantized(directory: str | Path, packed: bool = False,
                   embeddings: str = "float32") -> tuple[nn.Module, Any]:
    """Rebuild ``(model, tokenizer)`` from an export.

    Args:
        directory: an export directory (checked against its manifest first).
        packed: ``False``: every quantized weight is dequantized exactly into an ordinary
            ``nn.Linear`` (float32, as large in memory as the original). ``True``: each becomes a
            :class:`llvq.llm.packed.GLVQLinear` that keeps the codes packed and decodes on the
            fly (same outputs within float32 rounding, a fraction of the memory).
        embeddings: how the input embedding table and the output head (not quantized by GLVQ;
            a fifth of SmolLM2's float32 size) are kept: ``"float32"`` as exported, or
            ``"int8"`` (per-row symmetric int8 with a float32 scale per row, about a quarter of
            the memory) or ``"int4"`` (4-bit codes in blocks of 32 with a float16 scale and
            minimum, GGUF Q4_1's layout: 5 bits per entry, about a sixth); tied tables stay
            shared. Packed, the codes are used directly (a C kernel multiplies the head);
            not packed, the float32 weights become their round trip.
    """
    if embeddings not in EMBEDDINGS:
        raise ValueError(f"load_quantized: `embeddings` must be one of {EMBEDDINGS}, got "
                         f"{embeddings!r}")
    from transformers import AutoConfig, AutoModelForCausalLM

    d = Path(directory)
    manifest = read_manifest(d)
    config = AutoConfig.from_pretrained(str(d))
    rest = load_file(str(d / REST))
    for alias, target in manifest["aliases"].items():
        rest[alias] = rest[target]
    if packed:  # no float32 weights are ever allocated: parameters start on the meta device
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config)
    else:
        model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(rest, strict=False, assign=packed)
    if unexpected:
        raise ValueError(f"{d / REST} holds tensors the model does not have: {unexpected[:5]}")
    del rest
    q = load_file(str(d / QUANT))
    prefix = manifest["blocks_prefix"]
    done = set()
    for name, meta in manifest["layers"].items():
        packed_bits = q.pop(f"{name}.bits").to(torch.int64)
        bits, mask = packed_bits & 127, (packed_bits >> 7).bool()
        codes = _unpack_layer(q.pop(f"{name}.codes"), bits, meta["vectors_per_group"],
                              meta["lattice_dim"])
        scale = q.pop(f"{name}.scale")
        mu = torch.full_like(scale, 10.0)
        if bool(mask.any()):
            mu[mask] = q.pop(f"{name}.mu")
        generator, row_scale = q.pop(f"{name}.generator"), q.pop(f"{name}.row_scale", None)
        seed = meta.get("rotation_seed")
        param = f"{prefix}.{name.removeprefix('layers.')}.weight"
        module_name = param.rsplit(".", 1)[0]
        module = model.get_submodule(module_name)
        if packed:
            from llvq.llm.packed import GLVQLinear

            layer = GLVQLinear.from_codes(
                codes, generator, mu, scale, row_scale, bits, mask, meta["out_features"],
                manifest["group_size"], None if seed is None else int(seed),
                bias=getattr(module, "bias", None), code=meta.get("code", "box"))
            parent, _, child = module_name.rpartition(".")
            setattr(model.get_submodule(parent), child, layer)
        else:
            w = dequantize(codes, generator, mu, scale, row_scale, bits, mask,
                           meta["out_features"], manifest["group_size"], meta.get("code", "box"))
            if seed is not None:
                w = unrotate(w, int(seed))
            with torch.no_grad():
                module.weight.copy_(w.to(module.weight))
        done.add(param)
    left = [k for k in missing if k not in done]
    left += [k for k, p in model.named_parameters() if p.is_meta and k not in left]
    if left:
        raise ValueError(f"export {d} lacks tensors the model needs: {left[:5]}")
    _store_embeddings(model, embeddings, packed)
    model.eval()
    forward_without_cache(model)  # generate() keeps its KV cache; forward passes build none
    return model, load_tokenizer(d / TOKENIZER)

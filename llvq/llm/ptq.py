"""Block-by-block post-training quantization of a causal LM with GLVQ.

The inputs of block ``i`` are the outputs of the already-quantized blocks ``0..i-1`` on the
calibration windows (as in GPTQ). For each block: hooks on its linear layers accumulate
``H = sum_t x_t x_t^T`` over the calibration tokens; every linear layer is quantized from its
``H`` (bit widths by salience-driven allocation, :func:`llvq.llm.allocation.allocate_bits`); the
dequantized weights replace the originals; the block is run again to produce the next inputs.

Under ``torch.distributed`` (Lightning DDP) the calibration windows are shared out across
ranks and the ``H`` sums all-reduced; the groups of each layer are then shared out across
ranks and the results all-reduced, so every rank ends with the same quantized model.

The bit budget is honest and model-wide: a layer may use ``bits * numel + carry`` bits
including its side information, where ``carry`` is what earlier layers left unused (or
overspent), so the whole model lands at or just under the target.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from llvq.llm.allocation import allocate_bits
from llvq.llm.baselines import BitTally
from llvq.llm.glvq import quantize_layer
from llvq.llm.groups import (
    LayerProblem,
    LayerResult,
    check_shapes,
    dequantize,
    model_weight,
    relative_error,
    side_bits,
)
from llvq.llm.incoherence import layer_seed, rotate
from llvq.llm.models import block_linears, decoder_blocks
from llvq.llm.settings import GLVQSettings
from llvq.progress import track

log = logging.getLogger(__name__)

__all__ = ["BlockwisePTQ", "CalibrationWalk", "Chunk", "dist_rank_world", "quantize_with_baseline"]


class _Stop(Exception):
    pass


@dataclass
class Chunk:
    """One batch of calibration hidden states with the keyword arguments its block needs."""

    hidden: Tensor
    kwargs: dict[str, Any]


def dist_rank_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _block_output(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple | list) else out


class CalibrationWalk:
    """The decoder blocks of a causal LM walked in order on calibration windows.

    :meth:`capture_inputs` stores the inputs of block 0; :meth:`hessians` gives ``H`` of every
    linear layer of block ``i`` from the stored inputs; :meth:`run_block` replaces them by the
    block's outputs (after its layers were quantized), so block ``i + 1`` sees what the
    quantized blocks before it produce, as in GPTQ.

    The hidden states of every calibration window are held between blocks: in memory, or with
    ``offload`` in files under that directory (per batch of windows, one for the hidden states,
    rewritten after every block, and one for the block's keyword arguments, written once; read
    back one batch at a time), so the calibration set can be far larger than memory (``model.calib_offload``). The
    Hessians are summed batch by batch either way, and the result is the same.

    Args:
        model: a causal LM (see :mod:`llvq.llm.models`); modified in place by its users.
        calib_tokens: ``(N, T)`` calibration windows.
        batch_size: calibration windows per forward pass.
        name: the model's name, for error messages.
        offload: a directory for the hidden states (a fresh sub-directory is made in it and
            removed when the walk is garbage-collected or the process exits); ``None``: memory.
    """

    def __init__(self, model: nn.Module, calib_tokens: Tensor, batch_size: int = 4,
                 name: str = "model", offload: str | Path | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"model.calib_batch_size must be >= 1, got {batch_size}")
        self.offload: Path | None = None
        if offload is not None:
            root = Path(offload).expanduser()
            if root.exists() and not root.is_dir():
                raise ValueError(f"model.calib_offload={str(offload)!r} is a file, not a directory")
            root.mkdir(parents=True, exist_ok=True)
            self.offload = Path(tempfile.mkdtemp(prefix="llvq-calib-", dir=root))
            weakref.finalize(self, shutil.rmtree, self.offload, ignore_errors=True)
        self.model = model
        self.blocks = decoder_blocks(model)
        self.layers = [block_linears(b) for b in self.blocks]
        if not any(self.layers):
            raise ValueError(f"model '{name}' has no linear layers to quantize")
        self.batch_size = batch_size
        self.calib_tokens = calib_tokens
        self.chunks: list[Chunk | Path] = []  # with offload: the files

    # -- where the hidden states live ----------------------------------------------------------
    def _put(self, j: int, chunk: Chunk, same_kwargs: bool = False) -> None:
        """Keep chunk ``j`` (in memory, or written to its files: the hidden states, and its
        keyword arguments unless ``same_kwargs`` says they were written with it before)."""
        kept: Chunk | Path = chunk
        if self.offload is not None:
            kept = self.offload / f"chunk_{j:06d}.pt"
            torch.save(chunk.hidden.cpu(), kept)
            if not same_kwargs:  # position embeddings, masks: the same for every block
                torch.save(chunk.kwargs, self._kwargs_file(kept))
        if j == len(self.chunks):
            self.chunks.append(kept)
        else:
            self.chunks[j] = kept

    @staticmethod
    def _kwargs_file(hidden_file: Path) -> Path:
        return hidden_file.with_name(hidden_file.name.replace("chunk_", "kwargs_"))

    def _get(self, j: int) -> Chunk:
        """Chunk ``j`` with its tensors on the model's device."""
        chunk = self.chunks[j]
        if isinstance(chunk, Chunk):
            return chunk
        device = self._device()
        hidden = torch.load(chunk, map_location=device, weights_only=True)
        # our own file, written by _put in this process (kwargs hold non-tensor objects)
        kwargs = torch.load(self._kwargs_file(chunk), map_location=device, weights_only=False)
        return Chunk(hidden, kwargs)

    def iter_chunks(self) -> Iterator[tuple[int, Chunk]]:
        """``(j, chunk)`` for every stored batch of windows, loaded one at a time."""
        for j in range(len(self.chunks)):
            yield j, self._get(j)

    # -- calibration activations ---------------------------------------------------------------
    def _my_windows(self) -> Tensor:
        rank, world = dist_rank_world()
        return self.calib_tokens[rank::world] if world > 1 else self.calib_tokens

    @torch.no_grad()
    def capture_inputs(self) -> None:
        """Inputs (and keyword arguments) of block 0 for this rank's calibration windows."""
        first = self.blocks[0]
        self.chunks = []

        def hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs.pop("hidden_states")
            raise _Stop(Chunk(hidden.detach(), {k: v for k, v in kwargs.items()
                                                 if k != "hidden_states"}))

        handle = first.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            for batch in self._my_windows().split(self.batch_size):
                try:
                    self.model(input_ids=batch.to(self._device()), use_cache=False)
                except _Stop as stop:
                    self._put(len(self.chunks), stop.args[0])
        finally:
            handle.remove()

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def run_block(self, i: int) -> None:
        """Replace the stored hidden states by the outputs of block ``i``."""
        block = self.blocks[i]
        for j, c in self.iter_chunks():
            self._put(j, Chunk(_block_output(block(c.hidden, **c.kwargs)), c.kwargs),
                      same_kwargs=True)

    @torch.no_grad()
    def hessians(self, i: int, abs_means: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """``H = sum x x^T`` (float64) of every linear layer of block ``i``, summed over ranks.

        Args:
            i: the block.
            abs_means: if given, filled with each layer's mean ``|x_j|`` per input column
                (float64, over every calibration token of every rank; AWQ's statistic).
        """
        sums: dict[str, Tensor] = {}
        absum: dict[str, Tensor] = {}
        counts: dict[str, int] = {}
        handles = []
        for n, m in self.layers[i].items():
            sums[n] = torch.zeros(m.in_features, m.in_features, dtype=torch.float64,
                                  device=m.weight.device)
            if abs_means is not None:
                absum[n] = torch.zeros(m.in_features, dtype=torch.float64, device=m.weight.device)

            def hook(_m: nn.Module, inp: tuple, _out: Any, key: str = n) -> None:
                x = inp[0].reshape(-1, inp[0].shape[-1]).double()
                sums[key].addmm_(x.T, x)
                if key in absum:
                    absum[key] += x.abs().sum(0)
                    counts[key] = counts.get(key, 0) + x.shape[0]

            handles.append(m.register_forward_hook(hook))
        try:
            block = self.blocks[i]
            for _, c in self.iter_chunks():
                block(c.hidden, **c.kwargs)
        finally:
            for h in handles:
                h.remove()
        _, world = dist_rank_world()
        if world > 1:
            for v in [*sums.values(), *absum.values()]:
                dist.all_reduce(v)
        for n, v in absum.items():
            tokens = torch.tensor(float(counts.get(n, 0)), dtype=torch.float64, device=v.device)
            if world > 1:
                dist.all_reduce(tokens)
            abs_means[n] = v / tokens.clamp_min(1.0)
        return sums


class BlockwisePTQ(CalibrationWalk):
    """State of a block-by-block quantization run.

    Args:
        model: a causal LM (see :mod:`llvq.llm.models`); modified in place.
        calib_tokens: ``(N, T)`` calibration windows.
        bits: target bits per weight *including* side information (e.g. 2, 3, 1.5).
        settings: per-layer GLVQ settings.
        salience: salience-driven allocation (False: equal widths; the paper's ablation).
        batch_size: calibration windows per forward pass.
        name: the model's name, for error messages.
        offload: keep the calibration hidden states in files under this directory
            (:class:`CalibrationWalk`).
    """

    def __init__(self, model: nn.Module, calib_tokens: Tensor, bits: float,
                 settings: GLVQSettings, salience: bool = True, batch_size: int = 4,
                 name: str = "model", offload: str | Path | None = None) -> None:
        if not isinstance(bits, int | float) or bits < 1:
            raise ValueError(f"model.bits must be >= 1 bit per weight, got {bits!r}")
        super().__init__(model, calib_tokens, batch_size, name, offload)
        for i, lin in enumerate(self.layers):  # fail before any work, naming the layer
            for n, m in lin.items():
                check_shapes(m.out_features, m.in_features, settings.group_size,
                             settings.lattice_dim, f"layers.{i}.{n}")
        self.bits = float(bits)
        self.settings = settings
        self.salience = salience
        self.carry = 0.0  # bits left over by earlier layers (may be negative)
        self.results: dict[str, LayerResult] = {}

    # -- quantization --------------------------------------------------------------------------
    def layer_bits(self, w: Tensor, h: Tensor, name: str) -> tuple[Tensor, float]:
        """Bit width per group of one layer, and the bits the layer is planned to take.

        The plan counts the side information as if every group companded (µ stored), so the
        layer's stored size never exceeds it; the difference to the layer's budget is carried
        to the next layer. Planning (rather than measuring) keeps the carry independent of the
        optimisation, so every DDP rank knows every layer's budget in advance.
        """
        s = self.settings
        out, inp = w.shape
        m = inp // s.group_size
        budget = self.bits * w.numel() + self.carry
        side = side_bits(out, m, s.lattice_dim, m if s.compand else 0, s.row_scale)
        group_numel = w.numel() // m
        if s.code == "e8p":  # one width only: every group 2 bits, the side information on top
            bits = torch.full((m,), 2, dtype=torch.int64)
            planned = side + 2.0 * w.numel()
            self.carry = 0.0
            return bits, planned
        avg = (budget - side) / w.numel()
        n = max(1, math.floor(avg + 0.5))  # as in allocate_bits
        if self.salience:
            prob = LayerProblem(w, h, s, name)
            est = {b: prob.init_errors(torch.full((m,), b)) * prob.ref
                   for b in (n - 1, n, n + 1) if 1 <= b <= 8}
            bits = allocate_bits(est[n], budget - side, group_numel, estimate=est)
        else:
            bits = allocate_bits(-torch.arange(m, dtype=torch.float64), budget - side, group_numel)
        planned = side + float(bits.sum()) * group_numel
        self.carry = budget - planned
        return bits, planned

    def quantize_block(self, i: int) -> Iterator[tuple[str, LayerResult, float]]:
        """Quantize every linear layer of block ``i``; yields ``(name, result, bits/weight)``.

        Under DDP the work is shared out: with error feedback (groups one after another) each
        rank quantizes every ``world``-th layer of the block and the results are broadcast;
        without it each rank optimises every ``world``-th group of each layer.
        """
        hs = self.hessians(i)
        rank, world = dist_rank_world()
        s = self.settings
        plans = []
        seeds: dict[str, int | None] = {}
        for n, lin in self.layers[i].items():
            name = f"layers.{i}.{n}"
            w = lin.weight.detach().float().cpu()
            h = hs[n].float().cpu()
            seeds[name] = layer_seed(name) if s.incoherence else None
            if s.incoherence:  # quantize U W V^T under V H V^T
                w, h = rotate(w, h, seeds[name])
            bits, _ = self.layer_bits(w, h, name)
            plans.append((name, lin, w, h, bits))
        results: dict[str, LayerResult] = {}
        for j, (name, _lin, w, h, bits) in enumerate(plans):
            if s.error_feedback:
                if world == 1 or j % world == rank:
                    results[name] = quantize_layer(w, h, bits, s, name=name)
            else:
                mine = torch.arange(rank, bits.numel(), world) if world > 1 else None
                res = quantize_layer(w, h, bits, s, name=name, groups=mine)
                results[name] = _share_groups(res, mine, w, h, s) if world > 1 else res
        if s.error_feedback and world > 1:
            for j, (name, _lin, w, _h, bits) in enumerate(plans):
                results[name] = _broadcast_result(results.get(name), j % world, w.shape, bits, s)
        for name, lin, w, _h, _bits in plans:
            res = results[name]
            res.rotation_seed = seeds[name]
            with torch.no_grad():
                lin.weight.copy_(model_weight(res).to(lin.weight))
            self.results[name] = res
            yield name, res, layer_storage_bits(res) / w.numel()
        self.run_block(i)

    def named_layers(self) -> dict[str, nn.Linear]:
        """Every quantizable layer by the name its result has in :attr:`results`."""
        return {f"layers.{i}.{n}": lin for i, block in enumerate(self.layers)
                for n, lin in block.items()}

    def apply_result(self, i: int) -> None:
        """Write stored results of block ``i`` into the model (resume) and advance the inputs."""
        for n, lin in self.layers[i].items():
            res = self.results[f"layers.{i}.{n}"]
            with torch.no_grad():
                lin.weight.copy_(model_weight(res).to(lin.weight))
        self.run_block(i)


@torch.no_grad()
def quantize_with_baseline(model: nn.Module, calib_tokens: Tensor, baseline: Any,
                           batch_size: int = 4, name: str = "model",
                           progress: bool = False,
                           offload: str | Path | None = None) -> dict[str, float]:
    """Quantize every linear layer of the decoder blocks with an LLM baseline, block by block.

    A calibrated baseline (``calibrated = True``, e.g. GPTQ) gets each layer's ``H`` from the
    block's inputs, which are the outputs of the already-quantized blocks before it (GPTQ's
    sequential order; the layers of one block share one pass, the reference's default), and
    as keyword arguments what its ``inputs`` tuple names: ``abs_mean`` (the mean ``|x_j|`` per
    input column) and ``name`` (the layer's name, ``layers.<block>.<module path>``, as
    :class:`BlockwisePTQ` names it); AWQ asks for both. Any other baseline is
    called on the weight alone. Weights are written in place. ``offload``: as
    :class:`CalibrationWalk`'s.

    Returns:
        ``{"bits_per_weight": ..., per-weight figures of the baseline's extra counts,
        "weights": n}``, as :func:`llvq.llm.baselines.apply_baseline`.
    """
    wants = tuple(getattr(baseline, "inputs", ()))  # checked before the calibration pass
    unknown = set(wants) - {"abs_mean", "name"}
    if unknown:
        raise ValueError(f"{type(baseline).__name__}.inputs asks for {sorted(unknown)}; "
                         f"quantize_with_baseline provides 'abs_mean' and 'name'")
    walk = CalibrationWalk(model, calib_tokens, batch_size, name, offload)
    calibrated = bool(getattr(baseline, "calibrated", False))
    if calibrated:
        walk.capture_inputs()
    tally = BitTally()
    blocks = range(len(walk.blocks))
    if progress:
        blocks = track(blocks, description=f"{type(baseline).__name__} blocks")
    for i in blocks:
        abs_means: dict[str, Tensor] | None = {} if "abs_mean" in wants else None
        hs = walk.hessians(i, abs_means) if calibrated else {}
        for n, lin in walk.layers[i].items():
            w = lin.weight.detach().float().cpu()
            extra: dict[str, Any] = {}
            if abs_means is not None:
                extra["abs_mean"] = abs_means[n].float().cpu()
            if "name" in wants:
                extra["name"] = f"layers.{i}.{n}"  # as BlockwisePTQ names (and seeds) it
            res = baseline(w, hs[n].float().cpu(), **extra) if calibrated else baseline(w)
            lin.weight.copy_(res.weight.to(lin.weight))
            tally.add(res, w.numel())
        if calibrated:
            walk.run_block(i)
    return tally.report()


def layer_storage_bits(res: LayerResult) -> float:
    """Bits one quantized layer takes: codes at their widths plus side information."""
    m, vecs, d = res.codes.shape
    code_bits = float((res.bits * vecs * d).sum())
    out = res.weight.shape[0]
    return code_bits + side_bits(out, m, d, int(res.compand.sum()), res.row_scale is not None)


def _share_groups(res: LayerResult, mine: Tensor, w: Tensor, h: Tensor,
                  s: GLVQSettings) -> LayerResult:
    """All-reduce the per-group results each rank computed for its own groups."""
    mask = torch.zeros(res.bits.numel(), dtype=torch.bool)
    mask[mine] = True
    parts = []
    for t in (res.codes, res.generator, res.mu, res.scale):
        v = t.double().clone()
        v[~mask] = 0
        dist.all_reduce(v)
        parts.append(v)
    codes = parts[0].to(res.codes.dtype)
    gen, mu, scale = (p.to(torch.float16) for p in parts[1:])
    weight = dequantize(codes, gen, mu, scale, res.row_scale, res.bits, res.compand,
                        w.shape[0], s.group_size, s.code)
    err = relative_error(w, weight, h)
    errs = torch.tensor([res.error_init, float(res.outer_steps)], dtype=torch.float64)
    dist.all_reduce(errs, op=dist.ReduceOp.MAX)
    return LayerResult(codes=codes, generator=gen, mu=mu, scale=scale, row_scale=res.row_scale,
                       bits=res.bits, weight=weight, error=err, error_init=float(errs[0]),
                       outer_steps=int(errs[1]), compand=res.compand, code=s.code)


def _broadcast_result(res: LayerResult | None, src: int, shape: torch.Size, bits: Tensor,
                      s: GLVQSettings) -> LayerResult:
    """Rank ``src``'s result of one layer on every rank (shapes follow from the settings)."""
    out, inp = shape
    m, d = inp // s.group_size, s.lattice_dim
    n = out * s.group_size // d
    have = res is not None
    tensors = {
        "codes": res.codes.to(torch.int64) if have else torch.zeros(m, n, d, dtype=torch.int64),
        "generator": res.generator.double() if have else torch.zeros(m, d, d, dtype=torch.float64),
        "mu": res.mu.double() if have else torch.zeros(m, dtype=torch.float64),
        "scale": res.scale.double() if have else torch.zeros(m, dtype=torch.float64),
        "compand": res.compand.to(torch.int64) if have else torch.zeros(m, dtype=torch.int64),
        "row_scale": (res.row_scale.double() if have and res.row_scale is not None
                      else torch.zeros(out if s.row_scale else 0, dtype=torch.float64)),
        "stats": (torch.tensor([res.error, res.error_init, res.outer_steps], dtype=torch.float64)
                  if have else torch.zeros(3, dtype=torch.float64)),
    }
    for t in tensors.values():
        dist.broadcast(t, src=src)
    if have:
        return res
    t = tensors
    half = torch.float16
    row_scale = t["row_scale"].to(half) if s.row_scale else None
    codes, compand = t["codes"].to(torch.int16), t["compand"].bool()
    gen, mu, scale = t["generator"].to(half), t["mu"].to(half), t["scale"].to(half)
    weight = dequantize(codes, gen, mu, scale, row_scale, bits, compand, out, s.group_size,
                        s.code)
    err, err_init, outer = t["stats"].tolist()
    return LayerResult(codes=codes, generator=gen, mu=mu, scale=scale, row_scale=row_scale,
                       bits=bits, weight=weight, error=err, error_init=err_init,
                       outer_steps=int(outer), compand=compand, code=s.code)

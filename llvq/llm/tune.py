"""Tuning of the float parameters a quantized model keeps, against the full-precision model.

Post-training quantization fixes the codes and side information of every linear layer; what is
left in floating point (the norms' weights, biases) can still move. :func:`tune_float_parameters`
trains those with Adam to match the full-precision model's next-token distributions
(``KL(p_fp || p_q)`` per token) on random slices of the calibration windows, the
knowledge-distillation step that QuIP# and AQLM run on more parameters. It changes no code
and no bit count. The windows are drawn from a seeded generator, so a run repeats exactly
(the LLM job re-runs it after a resume); under DDP rank 0's result is broadcast.

:func:`scale_tuning` adds the scales a quantized layer stores to what is tuned, its codes kept:
for GLVQ the float16 row scale of each output row and the float16 scale of each group (both
multiply the decoded weight, in the rotated coordinates under incoherence processing, so the
layer runs as ``U^T diag(a) W diag(b) V x`` while tuning); with ``codebook=True`` also GLVQ's
codebooks, each group's float16 generator ``G`` (as ``G0 (I + A)``, ``A`` from 0) and µ, the
weight decoded from the fixed codes on every step, as AQLM and QuIP# fine-tune their
codebooks with the codes fixed; for a baseline with a scale per row
and group (RTN, GPTQ without act-order) that scale; for the ``e8p`` baseline (QuIP#'s codes)
its float16 row scales, in the rotated coordinates as GLVQ's. The tuned scales are written back
in their stored precision, so the rate does not change.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from llvq.llm.e8p import E8PLayer
from llvq.llm.eval import _logits
from llvq.llm.groups import (
    SIDE_DTYPE,
    LayerResult,
    dequantize,
    held_mu,
    model_weight,
    ungroup_weight,
)
from llvq.llm.incoherence import unrotate
from llvq.llm.packed import _Rotation
from llvq.llm.settings import TuneSettings
from llvq.progress import track
from llvq.quantizers.glvq import GLVQState, GroupedLatticeQuantizer, logit_to_mu, mu_to_logit

__all__ = ["scale_tuning", "tunable_parameters", "tune_float_parameters"]


def tunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters tuning may change: every 1-D floating-point parameter (norm weights and
    biases) outside the input embedding table and the output head."""
    skip: set[int] = set()
    for get in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, get, lambda: None)()
        if module is not None:
            skip.update(id(p) for p in module.parameters())
    return {n: p for n, p in model.named_parameters()
            if (p.ndim == 1 or getattr(p, "llvq_tunable", False)) and p.is_floating_point()
            and id(p) not in skip}


def _factor(*shape: int, start: float = 1.0) -> nn.Parameter:
    p = nn.Parameter(torch.full(shape, start))
    p.llvq_tunable = True  # picked up by tunable_parameters whatever its shape
    return p


class _RotatedScales(nn.Module):
    """A layer during scale tuning: ``U^T diag(row) W diag(col ⊗ 1) V x + bias``.

    ``W`` is the dequantized weight in the rotated coordinates of ``seed`` (none: ``U = V =
    I``); ``row`` (per output row) and ``col`` (per group of ``group_size`` input columns)
    start at 1 and multiply the scales the method stores; :meth:`commit` writes them back.
    """

    def __init__(self, linear: nn.Linear, w: Tensor, seed: int | None, row: bool,
                 group_size: int | None) -> None:
        super().__init__()
        self.linear, self.group_size = linear, group_size
        self.register_buffer("w", w.detach().float())
        self.row = _factor(self.w.shape[0]) if row else None
        self.col = _factor(self.w.shape[1] // group_size) if group_size else None
        self.rot_in = _Rotation(self.w.shape[1], seed + 1) if seed is not None else None
        self.rot_out = _Rotation(self.w.shape[0], seed) if seed is not None else None

    def weight(self) -> Tensor:
        """``W`` in the rotated coordinates, before the tuned factors."""
        return self.w

    def forward(self, x: Tensor) -> Tensor:
        t = x.reshape(-1, x.shape[-1]).float()
        if self.rot_in is not None:
            t = self.rot_in(t)
        if self.col is not None:
            t = t * self.col.repeat_interleave(self.group_size)
        y = F.linear(t, self.weight())
        if self.row is not None:
            y = y * self.row
        if self.rot_out is not None:
            y = self.rot_out(y, transpose=True)
        if self.linear.bias is not None:
            y = y + self.linear.bias
        return y.reshape(*x.shape[:-1], -1).to(x.dtype)


class _GLVQScales(_RotatedScales):
    """GLVQ: the float16 row scales and group scales of its :class:`LayerResult`."""

    def __init__(self, linear: nn.Linear, res: LayerResult, group_size: int) -> None:
        super().__init__(linear, res.weight, res.rotation_seed, res.row_scale is not None,
                         group_size)
        self.res = res

    @torch.no_grad()
    def commit(self) -> None:
        """Round the tuned scales to their stored dtype, re-dequantize, update the layer."""
        r = self.res
        r.scale = (r.scale.float() * self.col.detach().float()).to(SIDE_DTYPE)
        if self.row is not None:
            r.row_scale = (r.row_scale.float() * self.row.detach().float()).to(SIDE_DTYPE)
        r.weight = dequantize(r.codes, r.generator, r.mu, r.scale, r.row_scale, r.bits,
                              r.compand, r.weight.shape[0], self.group_size, r.code)
        self.linear.weight.copy_(model_weight(r).to(self.linear.weight))


class _GLVQCodebook(_GLVQScales):
    """GLVQ with its codebooks tuned too: per group ``G = G0 (I + A)`` and µ (where the group
    compands), the weight decoded from the fixed codes on every forward pass."""

    def __init__(self, linear: nn.Linear, res: LayerResult, group_size: int) -> None:
        super().__init__(linear, res, group_size)
        del self.w  # decoded from the codes instead
        groups, _, d = res.codes.shape
        # the code's arithmetic only (every call gets a state); not a submodule, so none of its
        # parameters is found by tunable_parameters
        object.__setattr__(self, "q", GroupedLatticeQuantizer(d, groups=groups, learnable=False,
                                                              code=res.code))
        mu = held_mu(res.mu)
        self.register_buffer("g0", res.generator.float())
        self.register_buffer("bits", res.bits.to(torch.int64).flatten())
        self.register_buffer("compand", res.compand.to(torch.bool).flatten())
        self.register_buffer("side_scale", res.scale.float().flatten())
        self.register_buffer("stored_row", None if res.row_scale is None else res.row_scale.float())
        eye = GLVQState(generator=torch.eye(d).expand(groups, d, d), mu=mu, scale=self.side_scale,
                        bits=self.bits, compand=self.compand)
        k = res.codes.float() - self.q.code_offset(eye)
        self.register_buffer("unit_points", self.q.points(k, eye))  # (k + 1/2), or E8P's point
        self.delta = _factor(groups, d, d, start=0.0)
        self.mu_logit = nn.Parameter(mu_to_logit(mu))
        self.mu_logit.llvq_tunable = True
        self.out_features = res.weight.shape[0]

    def generator(self) -> Tensor:
        return self.g0 + self.g0 @ self.delta

    def weight(self) -> Tensor:
        st = GLVQState(generator=self.generator(), mu=logit_to_mu(self.mu_logit),
                       scale=self.side_scale, bits=self.bits, compand=self.compand)
        w = ungroup_weight(self.q.inverse_transform(self.unit_points @ st.generator, st),
                           self.out_features, self.group_size)
        return w * self.stored_row[:, None] if self.stored_row is not None else w

    @torch.no_grad()
    def commit(self) -> None:
        """Round the tuned generators and µ to float16, then the scales as
        :class:`_GLVQScales` does (which re-dequantizes from the stored values)."""
        r = self.res
        r.generator = self.generator().to(SIDE_DTYPE)
        tuned_mu = logit_to_mu(self.mu_logit).to(r.mu.device)
        r.mu = torch.where(self.compand.to(r.mu.device), tuned_mu, r.mu.float()).to(SIDE_DTYPE)
        super().commit()


class _E8PScales(_RotatedScales):
    """The ``e8p`` baseline: its float16 row scales (:class:`llvq.llm.e8p.E8PLayer`)."""

    def __init__(self, linear: nn.Linear, layer: E8PLayer) -> None:
        if layer.row_scale is None:
            raise ValueError("scale tuning: an e8p layer without row scales has no scale per "
                             "row to tune (E8PBaseline(row_scale=True))")
        super().__init__(linear, layer.weight, layer.seed, True, None)
        self.layer = layer

    @torch.no_grad()
    def commit(self) -> None:
        """Round the tuned row scales to float16; the weight follows (``diag(rs) s P``)."""
        old = self.layer.row_scale.float()
        new = (old * self.row.detach().float()).to(SIDE_DTYPE)
        self.layer.weight = self.layer.weight * (new.float() / old)[:, None]
        self.layer.row_scale = new
        w = self.layer.weight
        if self.layer.seed is not None:
            w = unrotate(w, self.layer.seed)
        self.linear.weight.copy_(w.to(self.linear.weight))


class _GroupScales(nn.Module):
    """A layer with a scale per output row and group of ``group_size`` input columns (RTN,
    GPTQ): ``(W ⊙ (F ⊗ 1)) x + bias`` with the factors ``F`` ``(out, groups)`` tuned."""

    def __init__(self, linear: nn.Linear, group_size: int) -> None:
        super().__init__()
        out, inp = linear.weight.shape
        if inp % group_size:
            raise ValueError(f"scale tuning: group_size={group_size} does not divide the layer's "
                             f"{inp} input columns")
        self.linear, self.group_size = linear, group_size
        self.factor = _factor(out, inp // group_size)

    def forward(self, x: Tensor) -> Tensor:
        w = self.linear.weight * self.factor.repeat_interleave(self.group_size, dim=1)
        return F.linear(x, w.to(x.dtype), self.linear.bias)

    @torch.no_grad()
    def commit(self) -> None:
        self.linear.weight.mul_(self.factor.repeat_interleave(self.group_size, dim=1))


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in model.modules():
        for key, child in parent._modules.items():
            if child is old:
                parent._modules[key] = new
                return
    raise ValueError("scale tuning: a layer to tune is not inside the model")


def _swap(linear: nn.Linear, result: object, group_size: int, codebook: bool = False) -> nn.Module:
    """The tuning module of one layer, by what its quantizer left (``None``: a scale per row and
    group on the layer's own weight)."""
    if codebook and not isinstance(result, LayerResult):
        raise ValueError(f"codebook tuning (model.tune.codebook) needs GLVQ layers; this layer "
                         f"was quantized by {'a scale-per-group baseline' if result is None else type(result).__name__}, "
                         f"which has no codebook to tune")
    if result is None:
        return _GroupScales(linear, group_size)
    if isinstance(result, LayerResult):
        return (_GLVQCodebook if codebook else _GLVQScales)(linear, result, group_size)
    if isinstance(result, E8PLayer):
        return _E8PScales(linear, result)
    raise TypeError(f"scale tuning: no scales to tune in a {type(result).__name__}")


@contextmanager
def scale_tuning(model: nn.Module, linears: dict[str, nn.Linear], group_size: int,
                 results: dict[str, LayerResult] | None = None,
                 codebook: bool = False) -> Iterator[None]:
    """Tune the stored scales of ``linears`` too while the block runs (see the module doc).

    Inside the block each layer of ``linears`` is replaced by a module whose scale factors are
    parameters (found by :func:`tunable_parameters`); on a normal exit the tuned scales are
    rounded to their stored precision and written into ``results`` and the layers' weights;
    the original layers are put back either way.

    Args:
        model: the model holding ``linears``.
        linears: the quantized layers by name.
        group_size: input columns per group.
        results: per name of ``linears``, GLVQ's :class:`LayerResult` (row and group scales
            are tuned and updated in place) or the ``e8p`` baseline's
            :class:`llvq.llm.e8p.E8PLayer` (its row scales); ``None`` for a baseline whose
            weight is a scale per row and group times an integer grid (RTN, GPTQ without
            act-order).
        codebook: tune GLVQ's generators and µ too (GLVQ results only).
    """
    if results is not None and set(results) != set(linears):
        raise ValueError("scale tuning: the layers and their quantization results do not match")
    swaps = {n: _swap(lin, None if results is None else results[n], group_size, codebook)
             for n, lin in linears.items()}
    device = next(model.parameters()).device
    for n, lin in linears.items():
        _replace(model, lin, swaps[n].to(device))
    try:
        yield
    finally:
        for n, lin in linears.items():
            _replace(model, swaps[n], lin)
    for module in swaps.values():
        module.commit()


def _distance(student: object, teacher: object, objective: str) -> Tensor:
    """The tuning loss between two model outputs (see :func:`tune_float_parameters`)."""
    if objective == "kl":
        target = F.log_softmax(_logits(teacher).float(), dim=-1)
        pred = F.log_softmax(_logits(student).float(), dim=-1)
        return F.kl_div(pred.flatten(0, 1), target.flatten(0, 1), log_target=True,
                        reduction="batchmean")
    h_s, h_t = (getattr(o, "last_hidden_state", None) for o in (student, teacher))
    if not isinstance(h_t, Tensor) or not isinstance(h_s, Tensor):
        raise TypeError(f"objective='hidden' needs a model output with last_hidden_state, got "
                        f"{type(teacher).__name__}")
    return (h_s.float() - h_t.float()).square().mean() / h_t.float().square().mean()


def tune_float_parameters(model: nn.Module, teacher: nn.Module, calib: Tensor,
                          settings: TuneSettings, progress: bool = True,
                          objective: str = "kl") -> list[float]:
    """Tune :func:`tunable_parameters` of ``model`` toward ``teacher`` on ``calib``, in place.

    Args:
        model: the quantized model (its quantized weights stay as they are).
        teacher: the full-precision model (not changed).
        calib: ``(N, L)`` calibration token windows; each step takes ``settings.batch_size``
            of them at random and one random slice of ``settings.seq_len`` tokens.
        settings: steps, learning rate, batch, slice length, seed.
        progress: show a progress bar.
        objective: ``"kl"`` (a causal LM: ``KL(p_fp || p_q)`` of the next-token distributions,
            mean per token) or ``"hidden"`` (an encoder: the squared error of the last hidden
            states relative to the teacher's mean square).

    Returns:
        The loss of every step (nats per token for ``"kl"``).

    Raises:
        ValueError: ``calib`` is not 2-D or shorter than ``settings.seq_len``; the model has no
            tunable parameter; a loss is not finite; an unknown ``objective``.
    """
    if objective not in ("kl", "hidden"):
        raise ValueError(f"tuning objective must be 'kl' or 'hidden', got {objective!r}")
    s = settings
    if calib.dim() != 2 or calib.shape[1] < s.seq_len:
        raise ValueError(f"model.tune: need 2-D calibration windows of at least "
                         f"model.tune.seq_len={s.seq_len} tokens, got shape {tuple(calib.shape)}")
    params = tunable_parameters(model)
    if not params:
        raise ValueError("model.tune: the model has no float parameter left to tune (no 1-D "
                         "parameters outside the embeddings)")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = (model.training, teacher.training)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    model.eval()  # no dropout: the same function as at inference
    teacher.eval()
    device = next(iter(params.values())).device
    opt = torch.optim.Adam(list(params.values()), lr=s.lr)
    gen = torch.Generator().manual_seed(s.seed)
    losses: list[float] = []
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    steps = range(s.steps)
    if progress and rank == 0:
        steps = track(steps, "tuning float parameters", total=s.steps)
    try:
        for _ in steps:
            rows = torch.randint(0, calib.shape[0], (s.batch_size,), generator=gen)
            start = int(torch.randint(0, calib.shape[1] - s.seq_len + 1, (1,), generator=gen))
            x = calib[rows, start:start + s.seq_len].to(device)
            with torch.no_grad():
                target = teacher(x)
            loss = _distance(model(x), target, objective)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ValueError(f"model.tune: the loss became {value} at step "
                                 f"{len(losses)}; lower model.tune.lr (now {s.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(value)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(modes[0])
        teacher.train(modes[1])
    if dist.is_available() and dist.is_initialized():  # every rank ends with rank 0's
        with torch.no_grad():
            for p in params.values():
                dist.broadcast(p.data, src=0)
    return losses

"""Tuning of the float parameters a quantized model keeps, against the full-precision model.

Post-training quantization fixes the codes and side information of every linear layer; what is
left in floating point (the norms' weights, biases) can still move. :func:`tune_float_parameters`
trains those with Adam to match the full-precision model's next-token distributions
(``KL(p_fp || p_q)`` per token) on random slices of the calibration windows, the
knowledge-distillation step that QuIP# and AQLM run on more parameters. It changes no code
and no bit count. The windows are drawn from a seeded generator, so a run repeats exactly
(the LLM job re-runs it after a resume); under DDP rank 0's result is broadcast.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from llvq.llm.eval import _logits
from llvq.llm.settings import TuneSettings
from llvq.progress import track

__all__ = ["tunable_parameters", "tune_float_parameters"]


def tunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters tuning may change: every 1-D floating-point parameter (norm weights and
    biases) outside the input embedding table and the output head."""
    skip: set[int] = set()
    for get in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, get, lambda: None)()
        if module is not None:
            skip.update(id(p) for p in module.parameters())
    return {n: p for n, p in model.named_parameters()
            if p.ndim == 1 and p.is_floating_point() and id(p) not in skip}


def tune_float_parameters(model: nn.Module, teacher: nn.Module, calib: Tensor,
                          settings: TuneSettings, progress: bool = True) -> list[float]:
    """Tune :func:`tunable_parameters` of ``model`` toward ``teacher`` on ``calib``, in place.

    Args:
        model: the quantized causal LM (its quantized weights stay as they are).
        teacher: the full-precision model (not changed).
        calib: ``(N, L)`` calibration token windows; each step takes ``settings.batch_size``
            of them at random and one random slice of ``settings.seq_len`` tokens.
        settings: steps, learning rate, batch, slice length, seed.
        progress: show a progress bar.

    Returns:
        The loss (mean KL per token, nats) of every step.

    Raises:
        ValueError: ``calib`` is not 2-D or shorter than ``settings.seq_len``; the model has no
            tunable parameter; a loss is not finite.
    """
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
                target = F.log_softmax(_logits(teacher(x)).float(), dim=-1)
            pred = F.log_softmax(_logits(model(x)).float(), dim=-1)
            loss = F.kl_div(pred.flatten(0, 1), target.flatten(0, 1), log_target=True,
                            reduction="batchmean")
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

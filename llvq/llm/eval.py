"""Perplexity of a causal language model over non-overlapping windows of tokens."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["perplexity"]


def _logits(output: Any) -> Tensor:
    """Logits of a Hugging Face model output, a tuple, or a plain tensor."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)):
        logits = output[0]
    if not isinstance(logits, Tensor):
        raise TypeError(f"cannot find logits in the model output of type {type(output).__name__}")
    return logits


def perplexity(
    model: nn.Module,
    tokens: Tensor,
    seq_len: int = 512,
    batch_size: int = 4,
    progress: bool = True,
) -> dict[str, float | int]:
    """Perplexity of ``model`` on ``tokens``, over non-overlapping windows of ``seq_len``.

    The tokens are cut into ``len(tokens) // seq_len`` windows (stride ``seq_len``; the last
    partial window is dropped). In each window the model predicts tokens 2..seq_len from those
    before them inside the window, so ``seq_len - 1`` tokens per window are scored. The summed
    negative log-likelihood is accumulated in float64.

    Args:
        model: a causal language model called as ``model(input_ids)``, returning logits
            ``(B, T, vocab)`` (directly or as ``.logits``); it runs where its parameters are.
        tokens: 1-D int64 token ids.
        seq_len: tokens per window (and the stride).
        batch_size: windows per forward pass.
        progress: show a progress bar over the windows.

    Returns:
        ``{"ppl", "nll" (mean per predicted token, nats), "tokens" (predicted tokens),
        "windows", "seq_len", "stride"}``.

    Raises:
        ValueError: when ``tokens`` is not 1-D, ``seq_len < 2`` or ``batch_size < 1``, or there
            are fewer tokens than one window.
    """
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D token ids, got shape {tuple(tokens.shape)}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    windows = tokens.numel() // seq_len
    if windows == 0:
        raise ValueError(
            f"perplexity needs at least one window of seq_len={seq_len} tokens, got "
            f"{tokens.numel()} tokens"
        )
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    data = tokens[: windows * seq_len].to(torch.long).view(windows, seq_len)

    starts = range(0, windows, batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=windows, desc="perplexity", unit="window", leave=False)
    was_training = model.training
    model.eval()
    nll_sum = torch.zeros((), dtype=torch.float64)
    try:
        with torch.inference_mode():
            for start in starts:
                batch = data[start : start + batch_size].to(device)  # (b, T)
                logits = _logits(model(batch))  # (b, T, V)
                loss = F.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                    batch[:, 1:].reshape(-1),
                    reduction="none",
                )  # (b * (T - 1),) float32
                nll_sum += loss.detach().to("cpu", torch.float64).sum()
                if bar is not None:
                    bar.update(batch.shape[0])
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    predicted = windows * (seq_len - 1)
    nll = float(nll_sum) / predicted
    return {
        "ppl": math.exp(nll),
        "nll": nll,
        "tokens": predicted,
        "windows": windows,
        "seq_len": seq_len,
        "stride": seq_len,
    }

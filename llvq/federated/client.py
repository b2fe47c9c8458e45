"""One client's part of a round: local SGD from the global weights, then compress the update."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from llvq.federated.compressors import Compressor
from llvq.federated.payload import Payload

__all__ = ["local_update", "round_seed"]


def round_seed(seed: int, round_idx: int, client: int) -> int:
    """The seed both ends know for (round, client): dither, shuffles, stochastic rounding."""
    return (int(seed) * 1_000_003 + int(round_idx)) * 10_007 + int(client)


def local_update(model: nn.Module, global_vec: Tensor, x: Tensor, y: Tensor, compressor: Compressor,
                 seed: int, lr: float, epochs: int = 1, steps: int | None = None,
                 batch_size: int = 32) -> tuple[Payload, Tensor]:
    """Local SGD on ``(x, y)`` starting at ``global_vec``; returns the payload and the true update.

    Args:
        model: a scratch copy of the architecture (its weights are overwritten).
        global_vec: ``(P,)`` global weights.
        x, y: the client's data.
        compressor: how the update ``h = w_client - w_global`` is sent.
        seed: :func:`round_seed` of this client and round.
        lr: local SGD step size.
        epochs: passes over the local data (ignored when ``steps`` is set).
        steps: local SGD steps instead of epochs.
        batch_size: local mini-batch size.
    """
    vector_to_parameters(global_vec.clone(), model.parameters())  # (views: never train in place)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(y)
    order: list[Tensor] = []
    if steps is None:
        for _ in range(epochs):
            order += list(torch.randperm(n, generator=gen).split(batch_size))
    else:
        while len(order) < steps:
            order += list(torch.randperm(n, generator=gen).split(batch_size))
        order = order[:steps]
    with torch.enable_grad():
        for idx in order:
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    h = parameters_to_vector(model.parameters()).detach() - global_vec
    return compressor.compress(h, seed), h

"""Client shares of a labelled data set: IID, or non-IID by a Dirichlet(alpha) split of labels.

Dirichlet split (Hsu, Qi & Brown 2019, "Measuring the effects of non-identical data
distribution"): for every class ``c`` draw ``p_c ~ Dir(alpha * 1_U)`` and deal the class's
samples to the ``U`` clients in proportions ``p_c``. Small ``alpha`` (0.1) gives clients
dominated by one or two classes; large ``alpha`` tends to IID.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["dirichlet_split", "iid_split"]


def iid_split(num_samples: int, num_clients: int, seed: int = 0) -> list[Tensor]:
    """A random partition of ``range(num_samples)`` into ``num_clients`` near-equal shares."""
    if num_clients < 1 or num_clients > num_samples:
        raise ValueError(f"num_clients must be in [1, {num_samples}], got {num_clients}")
    perm = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    return [part.sort().values for part in torch.tensor_split(perm, num_clients)]


def dirichlet_split(labels: Tensor, num_clients: int, alpha: float, seed: int = 0,
                    min_size: int = 2) -> list[Tensor]:
    """Non-IID shares: each class is dealt to the clients in ``Dir(alpha)`` proportions.

    Args:
        labels: ``(N,)`` integer labels.
        num_clients: ``U >= 1``.
        alpha: Dirichlet concentration ``> 0``.
        seed: seeds the proportions and the shuffles.
        min_size: redraw (up to 100 times) until every client holds at least this many samples.

    Returns:
        ``U`` sorted index tensors that partition ``range(N)``.
    """
    if alpha <= 0:
        raise ValueError(f"federated.alpha must be > 0 (or null for IID), got {alpha}")
    y = labels.cpu().numpy()
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients * min_size > len(y):
        raise ValueError(f"num_clients={num_clients} is too many for {len(y)} samples "
                         f"(each client needs at least {min_size})")
    rng = np.random.default_rng(seed)
    for _ in range(100):
        shares: list[list[int]] = [[] for _ in range(num_clients)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for u, part in enumerate(np.split(idx, cuts)):
                shares[u].extend(part.tolist())
        if min(len(s) for s in shares) >= min_size:
            return [torch.tensor(sorted(s), dtype=torch.int64) for s in shares]
    raise ValueError(f"no Dirichlet(alpha={alpha}) split gave every one of {num_clients} clients "
                     f"{min_size} samples; raise federated.alpha or lower federated.num_clients")

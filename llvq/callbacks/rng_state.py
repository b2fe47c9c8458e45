"""Random-generator states in every checkpoint, so a resumed run draws what the original drew.

Lightning restores weights, optimizers, schedulers and loop counters, but not the global
generators of torch (CPU and CUDA), NumPy and Python: a resumed prior would apply other
dropout masks than the uninterrupted run. This callback's ``state_dict`` (saved in every
checkpoint Lightning writes) holds them; a resumed run sets them back when training starts,
after Lightning's set-up has drawn whatever it draws, so the next training step sees the state
the saved step left. The states are tensors and plain numbers (checkpoints load with
``weights_only=True``). The runner adds this callback to every run.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["RNGState", "get_rng_states", "set_rng_states"]


def get_rng_states() -> dict[str, Any]:
    """The global generators' states as tensors and plain numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                      float(cached)],
            "python": random.getstate()}


def set_rng_states(states: dict[str, Any]) -> None:
    """Set the global generators from :func:`get_rng_states`' output."""
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


class RNGState(Callback):
    """Saves the global random-generator states with each checkpoint; restores them on resume."""

    def __init__(self) -> None:
        self._loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return get_rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict  # applied in on_train_start, after the set-up's own draws

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._loaded is not None:
            set_rng_states(self._loaded)
            self._loaded = None

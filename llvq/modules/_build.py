"""Build a sub-module from either a ready ``nn.Module`` or a Hydra config node."""

from __future__ import annotations

import math
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

__all__ = ["build_module", "positive_int", "positive_number", "to_container"]


def positive_number(value: Any, setting: str) -> float:
    """``value`` as a float, or one ``ValueError`` naming ``setting`` unless a finite number > 0.

    Args:
        value: e.g. a learning rate as it came from the config (may be a string).
        setting: the config key named in the message, e.g. ``"model.lr"``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{setting} must be a number > 0, got {value!r}")
    return float(value)


def positive_int(value: Any, setting: str) -> int:
    """``value``, or one ``ValueError`` naming ``setting`` unless an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{setting} must be a positive integer, got {value!r}")
    return value


def build_module(spec: Any, what: str) -> nn.Module:
    """Return ``spec`` if it is a module, else instantiate it (a config with ``_target_``).

    Args:
        spec: an ``nn.Module``, or a dict / DictConfig with ``_target_``.
        what: the setting's name for the error message (e.g. ``"model.encoder"``).
    """
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, (dict, DictConfig)) and "_target_" in spec:
        return instantiate(spec)
    raise TypeError(f"`{what}` must be an nn.Module or a config with `_target_`, got {type(spec).__name__}")


def to_container(spec: Any) -> Any:
    """Plain-python copy of a config node for ``save_hyperparameters``.

    A ready ``nn.Module`` is not a hyper-parameter (its weights are in the checkpoint anyway);
    it is recorded by class name, and such a checkpoint is reloaded by passing the module again.
    """
    if isinstance(spec, DictConfig):
        return OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, nn.Module):
        return {"module": type(spec).__qualname__}
    return spec

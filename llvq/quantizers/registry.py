"""Name -> quantizer class registry (in the manner of CompressAI's and timm's registries)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from llvq.quantizers.base import Quantizer

__all__ = ["REGISTRY", "build", "list_quantizers", "register"]

REGISTRY: dict[str, type[Quantizer]] = {}

Q = TypeVar("Q", bound=type[Quantizer])


def register(name: str) -> Callable[[Q], Q]:
    """Class decorator adding a :class:`Quantizer` subclass to :data:`REGISTRY` under ``name``."""

    def wrap(cls: Q) -> Q:
        if not (isinstance(cls, type) and issubclass(cls, Quantizer)):
            raise TypeError(f"@register('{name}') must decorate a Quantizer subclass, got {cls!r}")
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"quantizer name '{name}' is already registered to {REGISTRY[name].__name__}")
        REGISTRY[name] = cls
        if "name" not in cls.__dict__:  # a class registered under several names keeps the first
            cls.name = name
        return cls

    return wrap


def list_quantizers(pattern: str = "*") -> list[str]:
    """Sorted registry names matching a shell-style ``pattern`` (e.g. ``"vq*"``)."""
    return sorted(n for n in REGISTRY if fnmatch.fnmatch(n, pattern))


def build(name: str, **kwargs: Any) -> Quantizer:
    """Instantiate the quantizer registered as ``name`` with ``kwargs``.

    Args:
        name: a registry name, e.g. ``"llvq"``; see :func:`list_quantizers`.
        **kwargs: constructor arguments; every quantizer takes ``dim``.

    Raises:
        ValueError: if ``name`` is not registered (the message lists the known names).
    """
    if name not in REGISTRY:
        raise ValueError(
            f"unknown quantizer '{name}'; known quantizers: {', '.join(list_quantizers())} "
            f"(set model/quantizer=<name>)")
    cls = REGISTRY[name]
    obj = cls(**kwargs)
    return obj

"""Name -> quantizer class: the quantizers' :class:`~llvq.registry.Registry`.

>>> @register("myq")
... class MyQuantizer(Quantizer): ...
>>> q = build("myq", dim=8)
>>> list_quantizers("vq*")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from llvq.quantizers.base import Quantizer
from llvq.registry import Registry

__all__ = ["QUANTIZERS", "REGISTRY", "build", "list_quantizers", "register"]

#: every registered bottleneck (outside plugins add to it through :mod:`llvq.plugins`).
QUANTIZERS: Registry[type[Quantizer]] = Registry("quantizer", base=Quantizer,
                                                 setting="model/quantizer")
#: the same registry (older name).
REGISTRY = QUANTIZERS

Q = TypeVar("Q", bound=type[Quantizer])


def register(name: str, *aliases: str) -> Callable[[Q], Q]:
    """Class decorator adding a :class:`Quantizer` subclass to :data:`QUANTIZERS` as ``name``."""
    return QUANTIZERS.register(name, *aliases)  # type: ignore[return-value]


def list_quantizers(pattern: str = "*") -> list[str]:
    """Sorted registry names matching a shell-style ``pattern`` (e.g. ``"vq*"``)."""
    return QUANTIZERS.names(pattern)


def build(name: str, **kwargs: Any) -> Quantizer:
    """Instantiate the quantizer registered as ``name`` with ``kwargs``.

    Args:
        name: a registry name, e.g. ``"llvq"``; see :func:`list_quantizers`.
        **kwargs: constructor arguments; every quantizer takes ``dim``.

    Raises:
        llvq.registry.RegistryError: ``name`` is not registered (the message lists the known
            names) or an option is not one the quantizer takes.
    """
    return QUANTIZERS.build(name, **kwargs)

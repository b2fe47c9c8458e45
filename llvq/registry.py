"""One small registry for every kind of thing llvq chooses by name.

Quantizers, lattices, federated compressors, federated models and datasets and LLM baselines
are all :class:`Registry` instances (in the manner of CompressAI's ``registry/torch.py`` and
timm's ``list_models``)::

    COMPRESSORS = Registry("compressor", setting="model.compressor")

    @COMPRESSORS.register("lattice")
    class LatticeCompressor: ...

    COMPRESSORS.build("lattice", rate=2)        # an unknown option is an error, never dropped
    COMPRESSORS.names("q*")                    # shell-style pattern

An entry is a class or a function; ``register(name, **info)`` may attach metadata (a lattice's
reference NSM, for instance), read back with :meth:`Registry.info`. A name that is not found
loads the outside plugins once (:func:`llvq.plugins.load_plugins`) before failing, so a
plugin's entries are found from a notebook, a checkpoint or a console script alike.

This module imports only :mod:`llvq.plugins` (which imports nothing of llvq); every layer
may use it.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from llvq.plugins import load_plugins

__all__ = ["Registry", "RegistryError", "check_options"]

T = TypeVar("T")


class RegistryError(ValueError):
    """An unknown name, a duplicate name or an unknown option."""


def check_options(fn: Callable[..., Any], kwargs: dict[str, Any], what: str,
                  setting: str | None = None) -> None:
    """Raise :class:`RegistryError` naming every keyword of ``kwargs`` that ``fn`` does not take.

    A callable with ``**kwargs`` accepts everything; positional-only parameters are skipped.

    Args:
        fn: a class (its ``__init__`` is checked) or a function.
        kwargs: the options about to be passed.
        what: ``"compressor 'lattice'"``, used in the message.
        setting: the config node the options come from, used in the message.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n, p in params.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    unknown = sorted(k for k in kwargs if k not in known)
    if unknown:
        where = f" (in {setting})" if setting else ""
        raise RegistryError(f"unknown option(s) {', '.join(map(repr, unknown))} for {what}{where}; "
                            f"its options are: {', '.join(known) or '(none)'}")


class Registry(Generic[T]):
    """Name -> class or factory, with metadata and strict option checking.

    Args:
        kind: what the entries are (``"quantizer"``, ``"lattice"``, ...), used in messages.
        base: when given, a registered class must subclass it.
        setting: the config setting that chooses an entry (``"model/quantizer"``), for messages.
    """

    def __init__(self, kind: str, base: type | None = None, setting: str | None = None) -> None:
        self.kind = kind
        self.base = base
        self.setting = setting
        self._entries: dict[str, T] = {}
        self._info: dict[str, dict[str, Any]] = {}

    # -- filling -------------------------------------------------------------------------------
    def register(self, name: str, *aliases: str, **info: Any) -> Callable[[T], T]:
        """Decorator adding a class or function under ``name`` (and ``aliases``).

        Args:
            name: the registry name.
            *aliases: more names for the same entry (``info`` is shared).
            **info: metadata kept beside the entry (see :meth:`info`).
        """

        def wrap(obj: T) -> T:
            self.add(name, obj, *aliases, **info)
            return obj

        return wrap

    def add(self, name: str, obj: T, *aliases: str, **info: Any) -> T:
        """Register ``obj`` under ``name`` (and ``aliases``); see :meth:`register`."""
        if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise TypeError(f"{self.kind} '{name}' must be a subclass of {self.base.__name__}, "
                            f"got {obj!r}")
        for key in (name, *aliases):
            if not isinstance(key, str) or not key:
                raise RegistryError(f"{self.kind} names must be non-empty strings, got {key!r}")
            if key in self._entries and self._entries[key] is not obj:
                raise RegistryError(f"{self.kind} name '{key}' is already registered to "
                                    f"{_describe(self._entries[key])}")
            self._entries[key] = obj
            self._info[key] = dict(info, name=name)
        if isinstance(obj, type) and "name" not in obj.__dict__:
            # a class registered under several names keeps the first as its own `name`
            obj.name = name  # type: ignore[attr-defined]
        return obj

    # -- reading -------------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs, sorted by name."""
        return [(n, self._entries[n]) for n in sorted(self._entries)]

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style ``pattern`` (``"vq*"``, ``"D*"``)."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def get(self, name: str) -> T:
        """The entry registered as ``name``; outside plugins are loaded once before failing."""
        if name not in self._entries:
            load_plugins()
        if name not in self._entries:
            where = f" (set {self.setting}=<name>)" if self.setting else ""
            raise RegistryError(f"unknown {self.kind} {name!r}; known {self.kind}s: "
                                f"{', '.join(self.names()) or '(none)'}{where}")
        return self._entries[name]

    def info(self, name: str) -> dict[str, Any]:
        """Metadata given at registration (always has ``name``, the canonical name)."""
        self.get(name)
        return dict(self._info[name])

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the entry ``name`` with the given arguments, after checking every keyword.

        Raises:
            RegistryError: unknown name, or a keyword the entry does not take.
        """
        obj = self.get(name)
        check_options(obj, kwargs, f"{self.kind} '{name}'", self.setting)  # type: ignore[arg-type]
        return obj(*args, **kwargs)  # type: ignore[operator]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"


def _describe(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"

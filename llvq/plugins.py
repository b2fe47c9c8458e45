"""Outside packages extend llvq without editing it: entry points and plain modules.

A package adds quantizers, lattices, compressors, federated models or datasets by registering
them at import time (``@register("myq")``, ``@LATTICES.register(...)``, ...) in a module that
it declares as an entry point of the group ``llvq.plugins``::

    # pyproject.toml of the outside package
    [project.entry-points."llvq.plugins"]
    mypkg = "mypkg.llvq_plugin"          # a module: importing it registers its entries
    # or   "mypkg.llvq_plugin:setup"     # a callable: called once with no arguments

``train.py``, every console script and the benches call :func:`load_plugins` before they
compose a config, and every registry calls it once before reporting an unknown name, so
``build("myq", ...)`` and loading a checkpoint of a plugin quantizer work from anywhere. A
config may also list plain modules (no packaging needed) under ``plugins: [mypkg.quantizers]``.

This module imports nothing from llvq.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from importlib.metadata import entry_points

__all__ = ["GROUP", "PluginError", "load_plugins", "loaded_plugins"]

#: the entry-point group outside packages declare.
GROUP = "llvq.plugins"

log = logging.getLogger("llvq")

_loaded: dict[str, str] = {}   # plugin name -> where it came from
_scanned = False


class PluginError(ImportError):
    """A plugin that could not be imported or set up; the message names it and its source."""


def _import(target: str, where: str) -> None:
    module_name, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module_name.strip())
        for part in filter(None, attr.strip().split(".")):
            obj = getattr(obj, part)
        if attr:
            obj()
    except Exception as err:
        raise PluginError(f"llvq plugin {target!r} ({where}) failed to load: "
                          f"{type(err).__name__}: {err}") from err


def load_plugins(modules: Iterable[str] | None = None) -> dict[str, str]:
    """Import every ``llvq.plugins`` entry point (once per process) and the given modules.

    Args:
        modules: plain module names (or ``module:callable``) to import as well, e.g. the
            config's ``plugins`` list.

    Returns:
        Every plugin loaded so far, name -> where it came from.

    Raises:
        PluginError: a plugin failed to import; the message names it.
    """
    global _scanned
    if not _scanned:
        _scanned = True  # set first: a plugin that builds a registry entry must not recurse
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            if ep.name in _loaded:
                continue
            dist = getattr(ep, "dist", None)
            where = f"entry point {ep.name!r} of {dist.name if dist else 'an unknown package'}"
            _import(ep.value, where)
            _loaded[ep.name] = where
            log.debug("loaded llvq plugin %s (%s)", ep.value, where)
    for name in modules or ():
        if not isinstance(name, str) or not name.strip():
            raise PluginError(f"plugins: entries must be module names, got {name!r}")
        if name not in _loaded:
            _import(name, "config key `plugins`")
            _loaded[name] = "config key `plugins`"
    return dict(_loaded)


def loaded_plugins() -> dict[str, str]:
    """The plugins loaded so far (name -> where from), without loading anything."""
    return dict(_loaded)

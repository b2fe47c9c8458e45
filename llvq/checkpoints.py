"""Checkpoints read safely: tensors and plain data only, and only trusted ``_target_`` s.

A Lightning checkpoint of an llvq module carries the configs its model is rebuilt from
(``hyper_parameters``), and every ``_target_`` in them is a callable that rebuilding will call.
So a checkpoint from elsewhere must not name an arbitrary callable (``os.system``). A target is
accepted when

1. its top-level package is trusted: ``llvq`` itself, or the package of a loaded plugin (an
   entry point of the ``llvq.plugins`` group or a module from the config key ``plugins``; see
   :mod:`llvq.plugins`) — this is checked on the string, before anything is imported; and
2. it resolves to a class or function *defined* in a trusted package (``llvq.cli.os.system``
   names a trusted package but resolves to :func:`os.system`, and is refused).

This module imports only :mod:`llvq.plugins`.
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch

from llvq.plugins import GROUP, load_plugins, loaded_plugins

__all__ = ["UntrustedTargetError", "check_targets", "load_checkpoint", "trusted_packages"]


class UntrustedTargetError(ValueError):
    """A checkpoint names a ``_target_`` outside llvq and the loaded plugins."""


def trusted_packages() -> set[str]:
    """Top-level packages whose callables a checkpoint may name: ``llvq`` + loaded plugins'."""
    eps = list(entry_points(group=GROUP))
    loaded = loaded_plugins()
    modules = [ep.value for ep in eps if ep.name in loaded]
    # plugins loaded from the config key `plugins` are recorded under their module name
    names = {ep.name for ep in eps}
    modules += [name for name in loaded if name not in names]
    return {"llvq"} | {m.partition(":")[0].strip().split(".")[0] for m in modules if m.strip()}


def _resolve(target: str) -> Any:
    """The object a dotted path names: the longest importable module, then attributes."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is not None and name.startswith(err.name):  # `name` itself is missing
                continue
            raise
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(f"no module named {parts[0]!r}")


def _check_target(target: Any, where: str, trusted: set[str]) -> None:
    text = str(target)
    hint = (f"{where}: refusing to instantiate _target_={text!r} from a checkpoint; only "
            f"callables of {sorted(trusted)} are rebuilt from checkpoints (an outside package "
            "qualifies once it is an llvq plugin: an entry point of the `llvq.plugins` group "
            "or a module listed under the config key `plugins`)")
    if text.split(".")[0] not in trusted:
        raise UntrustedTargetError(hint)
    try:
        obj = _resolve(text)
    except (ImportError, AttributeError) as err:
        raise UntrustedTargetError(f"{where}: _target_={text!r} does not resolve "
                                   f"({type(err).__name__}: {err})") from err
    module = getattr(obj, "__module__", None) or ""
    if not (inspect.isclass(obj) or inspect.isfunction(obj)) \
            or module.split(".")[0] not in trusted:
        raise UntrustedTargetError(f"{hint}; it resolves to {obj!r} of module {module!r}")


def check_targets(node: Any, where: str, trusted: set[str] | None = None) -> None:
    """Raise :class:`UntrustedTargetError` on any ``_target_`` in ``node`` that is not trusted.

    Args:
        node: plain containers (dicts, lists) as read from a checkpoint.
        where: the path of ``node`` for the message (``"x.ckpt:hyper_parameters"``).
        trusted: the trusted top-level packages (default: :func:`trusted_packages`).
    """
    trusted = trusted_packages() if trusted is None else trusted
    if isinstance(node, dict):
        if node.get("_target_") is not None:
            _check_target(node["_target_"], where, trusted)
        for key, value in node.items():
            check_targets(value, f"{where}.{key}", trusted)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_targets(value, f"{where}[{i}]", trusted)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint read with ``weights_only=True`` (tensors and plain data only).

    The outside plugins are loaded first (:func:`llvq.plugins.load_plugins`), so the configs
    may name their callables; any other ``_target_`` is refused (see the module docstring).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not a Lightning checkpoint with ``state_dict`` and
            ``hyper_parameters``, or (:class:`UntrustedTargetError`) it names an untrusted
            ``_target_``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass a .ckpt written by "
                                "train.py (e.g. logs/<task>/runs/<time>/checkpoints/last.ckpt)")
    load_plugins()
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or not {"state_dict", "hyper_parameters"} <= ckpt.keys():
        raise ValueError(f"{path} is not a Lightning checkpoint of an llvq module (it needs "
                         "`state_dict` and `hyper_parameters`)")
    check_targets(ckpt["hyper_parameters"], f"{path.name}:hyper_parameters")
    return ckpt

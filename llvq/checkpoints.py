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

Checkpoints are also *written* here: :class:`AtomicCheckpointIO` (the runner installs it in
every trainer) writes a temporary file, fsyncs it and renames it over the target, so the newest
checkpoint on disk is always complete, and a write that fails raises
:class:`CheckpointWriteError` naming the path instead of being skipped. :func:`find_last` and
:func:`check_resume` serve ``ckpt_path`` (explicit resume only; see ``docs/reliability.md``).

This module imports only :mod:`llvq.plugins`.
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
import os
import pickle
import zipfile
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from llvq.plugins import GROUP, load_plugins, loaded_plugins

__all__ = ["AtomicCheckpointIO", "CheckpointWriteError", "UntrustedTargetError", "atomic_write",
           "check_resume", "check_targets", "config_differences", "find_last",
           "load_checkpoint", "read_checkpoint", "trusted_packages"]


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (read-only directory, disk full, ...)."""


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, rename.

    The previous file at ``path`` (if any) stays intact until the new one is complete.

    Raises:
        CheckpointWriteError: naming ``path`` and the cause; the temporary file is removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
            fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointWriteError(
            f"could not write checkpoint {path}: {err.strerror or err}; free disk space or make "
            f"{path.parent} writable (paths.log_dir / hydra.run.dir choose where runs go). "
            "The previous checkpoint in that folder, if any, is intact") from err


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that never leaves a partial file and never fails silently.

    Lightning's own save swallows some write errors (a read-only folder left the run at exit
    code 0 with no checkpoint); this one serialises to memory, then :func:`atomic_write`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(path, buffer.getvalue())


def find_last(log_dir: str | Path, task_name: str) -> Path:
    """The newest ``last.ckpt`` of task ``task_name`` under ``log_dir`` (by modification time).

    Raises:
        FileNotFoundError: there is none; the message says where it looked.
    """
    root = Path(log_dir) / task_name
    found = [p for p in root.glob("**/checkpoints/last.ckpt") if p.is_file()]
    if not found:
        raise FileNotFoundError(f"ckpt_path=last: no {root}/**/checkpoints/last.ckpt exists (no "
                                f"earlier run of task_name={task_name!r} saved one); pass "
                                "ckpt_path=<run>/checkpoints/last.ckpt or drop ckpt_path")
    return max(found, key=lambda p: p.stat().st_mtime)


def read_checkpoint(path: str | Path, setting: str = "ckpt_path") -> dict[str, Any]:
    """A whole Lightning checkpoint, read with ``weights_only=True``, or one clear error.

    Raises:
        FileNotFoundError / IsADirectoryError / ValueError: naming ``setting`` and the file.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{setting}={str(path)!r} is a directory; pass a .ckpt file in "
                                f"it, e.g. {path / 'checkpoints' / 'last.ckpt'}"
                                if (path / "checkpoints").is_dir() else
                                f"{setting}={str(path)!r} is a directory; pass a .ckpt file "
                                "(e.g. <run>/checkpoints/last.ckpt)")
    if not path.is_file():
        raise FileNotFoundError(f"{setting}={str(path)!r} does not exist; pass the path of a "
                                ".ckpt file written by an earlier run (e.g. "
                                "<run>/checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
            AttributeError, UnicodeDecodeError, OSError) as err:  # OSError: a truncated zip
        raise ValueError(f"{setting}={str(path)!r} is not a readable checkpoint (truncated, "
                         f"damaged or another kind of file): {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{setting}={str(path)!r} is not a Lightning checkpoint (it has no "
                         "`state_dict`)")
    return ckpt


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: {}}
    return {prefix: node}


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


#: settings that say where a run writes, not what it trains: a resumed run may change them
WHERE_SETTINGS = frozenset({"output_dir", "log_dir", "run_dir", "save_dir", "export_dir"})


def config_differences(saved: dict[str, Any], current: dict[str, Any],
                       prefix: str = "model") -> list[str]:
    """``"model.latent_dim: checkpoint 64, now 32"`` for every setting that differs."""
    a, b = _flatten(dict(saved), prefix), _flatten(dict(current), prefix)
    rows = []
    for key in sorted(a.keys() | b.keys()):
        if key.rsplit(".", 1)[-1] in WHERE_SETTINGS:  # where files go, not what is trained
            continue
        if key not in b:
            rows.append(f"{key}: checkpoint {_canon(a[key])}, now not set")
        elif key not in a:
            rows.append(f"{key}: checkpoint not set, now {_canon(b[key])}")
        elif _canon(a[key]) != _canon(b[key]):
            rows.append(f"{key}: checkpoint {_canon(a[key])}, now {_canon(b[key])}")
    return rows


def check_resume(path: str | Path, hparams: dict[str, Any]) -> None:
    """Refuse a checkpoint that cannot resume the model configured now, in one message.

    Args:
        path: the ``ckpt_path`` to resume from.
        hparams: the configured module's ``hparams`` (compared with the checkpoint's).

    Raises:
        ValueError: not a checkpoint, or its saved model settings differ (all of them listed).
    """
    ckpt = read_checkpoint(path)
    diffs = config_differences(ckpt.get("hyper_parameters") or {}, _plain(hparams))
    if diffs:
        raise ValueError(f"ckpt_path={str(path)!r} was saved with other model settings than "
                         "this run; resume with the same settings (experiment, model, "
                         "quantizer) or start a fresh run without ckpt_path. Differences:\n  "
                         + "\n  ".join(diffs))


def _plain(node: Any) -> Any:
    """Containers as plain dicts/lists (OmegaConf nodes, AttributeDict, tuples)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
        if isinstance(node, (DictConfig, ListConfig)):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


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
        IsADirectoryError: ``path`` is a folder.
        ValueError: it does not load (truncated, damaged, another kind of file), it is not a
            Lightning checkpoint with ``state_dict`` and ``hyper_parameters``, or
            (:class:`UntrustedTargetError`) it names an untrusted ``_target_``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass a .ckpt written by "
                                "train.py (e.g. logs/<task>/runs/<time>/checkpoints/last.ckpt)")
    load_plugins()
    ckpt = read_checkpoint(path, setting="checkpoint")  # a folder, a damaged or foreign file
    if "hyper_parameters" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint of an llvq module (it needs "
                         "`state_dict` and `hyper_parameters`)")
    check_targets(ckpt["hyper_parameters"], f"{path.name}:hyper_parameters")
    return ckpt

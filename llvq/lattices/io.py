"""Generators on disk: a safetensors file holding the tensor ``generator`` (rows = basis)."""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from llvq.lattices.lattice import Lattice
from llvq.lattices.sphere import check_generator

__all__ = ["load_generator", "load_lattice", "load_metadata", "save_generator"]


def save_generator(generator: Tensor | Lattice, path: str | Path) -> None:
    """Write ``generator`` (or a lattice's generator) to ``path`` as float64 safetensors."""
    g = generator.generator if isinstance(generator, Lattice) else generator
    g = check_generator(g).detach().double().cpu().contiguous()
    save_file({"generator": g}, str(path))


def load_generator(path: str | Path) -> Tensor:
    """Read the ``generator`` tensor of a safetensors file.

    Raises:
        ValueError: if the file is missing, has no ``generator`` tensor, or it is not a
            square full-rank matrix.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"generator file '{p}' does not exist (set `generator` to a "
                         f".safetensors file holding a tensor named 'generator')")
    tensors = load_file(str(p))
    if "generator" not in tensors:
        raise ValueError(f"generator file '{p}' has no tensor named 'generator' "
                         f"(found: {sorted(tensors)})")
    return check_generator(tensors["generator"], f"generator in {p}").double()


def load_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file (``{}`` if it has none), e.g. the ``nsm`` that
    :func:`llvq.lattices.design.save_designed` records."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_lattice(path: str | Path, name: str | None = None) -> Lattice:
    """A :class:`Lattice` from a generator file (exact sphere decoding)."""
    return Lattice(name or Path(path).stem, load_generator(path))

"""llvq: lattice and vector-quantized bottlenecks for PyTorch Lightning + Hydra."""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "run"]


def __getattr__(name: str) -> Any:
    # `llvq.run` is imported lazily so that `import llvq.lattices` does not pull in Lightning.
    if name == "run":
        from llvq.runner import run

        return run
    raise AttributeError(f"module 'llvq' has no attribute {name!r}")

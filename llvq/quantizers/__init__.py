"""Quantizer registry and every registered bottleneck.

>>> from llvq.quantizers import build, list_quantizers
>>> q = build("llvq", dim=64, codebook_size=512)
"""

# Importing a module registers its quantizers.
from llvq.quantizers import (
    bounded,  # noqa: F401
    fibquant,  # noqa: F401
    glvq,  # noqa: F401
    identity,  # noqa: F401
    lattice,  # noqa: F401
    llvq,  # noqa: F401
    projected,  # noqa: F401
    statqat,  # noqa: F401
    turbo_lattice,  # noqa: F401
    turbo_scalar,  # noqa: F401
    vq,  # noqa: F401
    vq_ema,  # noqa: F401
)
from llvq.quantizers.base import Quantizer, QuantizerOutput, check_latents
from llvq.quantizers.bounded import BoundedLatticeQuantizer
from llvq.quantizers.registry import REGISTRY, build, list_quantizers, register

__all__ = [
    "REGISTRY",
    "BoundedLatticeQuantizer",
    "Quantizer",
    "QuantizerOutput",
    "build",
    "check_latents",
    "list_quantizers",
    "register",
]

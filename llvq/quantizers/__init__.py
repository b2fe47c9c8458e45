"""Quantizer registry and every registered bottleneck.

>>> from llvq.quantizers import build, list_quantizers
>>> q = build("llvq", dim=64, codebook_size=512)
"""

from llvq.quantizers.base import Quantizer, QuantizerOutput, check_latents
from llvq.quantizers.registry import REGISTRY, build, list_quantizers, register

# Importing a module registers its quantizers.
from llvq.quantizers import identity  # noqa: F401,E402
from llvq.quantizers import vq  # noqa: F401,E402
from llvq.quantizers import vq_ema  # noqa: F401,E402
from llvq.quantizers import llvq  # noqa: F401,E402
import importlib.util as _ilu  # noqa: E402  (temporary until the lattice module lands)

if _ilu.find_spec("llvq.quantizers.lattice") is not None:
    from llvq.quantizers import lattice  # noqa: F401,E402

__all__ = ["Quantizer", "QuantizerOutput", "REGISTRY", "build", "check_latents",
           "list_quantizers", "register"]

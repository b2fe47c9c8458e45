"""Lattice math: generators, closest-point decoders, NSM, dither, point counting.

>>> from llvq.lattices import get_lattice, closest_point, nsm
>>> L = get_lattice("E8")
>>> y = L.closest_point(x)                       # exact (Conway & Sloane), x: (..., 8)
>>> y = closest_point(L.generator, x, "exact")   # sphere decoding for any generator
>>> g, se = nsm(L, num_samples=200_000, seed=0)  # ~0.0717

Rows of a generator are basis vectors: lattice points are ``u @ G`` for integer ``u``.
Nothing here knows about training; quantizers in :mod:`llvq.quantizers` compose it.

Named lattices come from one registry (:mod:`llvq.lattices.registry`): each construction is a
function decorated with :func:`register_lattice` (name, reference NSM, fast decoder), inside
llvq (:mod:`llvq.lattices.generators`) or in an outside package's plugin module.
"""

from llvq.lattices.codes import bounded_code
from llvq.lattices.counting import (
                                    ball_volume,
                                    count_points,
                                    enumerate_points,
                                    estimate_count,
                                    overload_probability,
)
from llvq.lattices.dither import dithered_dequantize, dithered_quantize, sample_dither
from llvq.lattices.generators import golay_code
from llvq.lattices.io import load_generator, load_lattice, save_generator
from llvq.lattices.lattice import Lattice
from llvq.lattices.nsm import nsm, nsm_samples
from llvq.lattices.reduction import lll
from llvq.lattices.registry import (
    BEST_KNOWN,
    LATTICES,
    BestKnown,
    as_lattice,
    best_known,
    get_lattice,
    list_lattices,
    register_lattice,
)
from llvq.lattices.sphere import METHODS, check_generator, closest_coordinates, closest_point

__all__ = [
                                    "BEST_KNOWN",
                                    "LATTICES",
                                    "METHODS",
                                    "BestKnown",
                                    "Lattice",
                                    "as_lattice",
                                    "ball_volume",
                                    "best_known",
                                    "bounded_code",
                                    "check_generator",
                                    "closest_coordinates",
                                    "closest_point",
                                    "count_points",
                                    "dithered_dequantize",
                                    "dithered_quantize",
                                    "enumerate_points",
                                    "estimate_count",
                                    "get_lattice",
                                    "golay_code",
                                    "list_lattices",
                                    "lll",
                                    "load_generator",
                                    "load_lattice",
                                    "nsm",
                                    "nsm_samples",
                                    "overload_probability",
                                    "register_lattice",
                                    "sample_dither",
                                    "save_generator",
]

"""Federated learning with compressed model updates (UVeQFed / OLALa) through the trainer.

>>> from llvq.federated import build_compressor, dirichlet_split
>>> comp = build_compressor("olala", rate=2.0)
>>> payload = comp.compress(h, seed=7)          # h: (P,) client update w_client - w_global
>>> h_hat = comp.decompress(payload, seed=7)    # the server's reconstruction

A round (:class:`~llvq.modules.federated.FederatedModule`): the server sends the global
weights, every answering client runs local SGD, compresses ``h = w_client - w_global``
at ``R`` bits per coordinate (fixed-length indices, side information counted), and the
server validates, decompresses and averages the updates weighted by client data size.

Compressors, client models and data sets are registries (:data:`COMPRESSORS`, :data:`MODELS`,
:data:`DATASETS`, each a :class:`llvq.registry.Registry`): an outside package registers its own
and selects it by name (``model.compressor``, ``model.model``, ``model.dataset``).
"""

from llvq.federated.allocation import allocate_rates, fpld_allocation
from llvq.federated.compressors import (
    COMPRESSORS,
    Compressor,
    LatticeCompressor,
    NoneCompressor,
    QSGDCompressor,
    UniformCompressor,
    build_compressor,
)
from llvq.federated.data import DATASETS, load_federated_data
from llvq.federated.models import MODELS, build_model
from llvq.federated.olala import GeneratorNet, OlalaCompressor
from llvq.federated.payload import Payload, PayloadError
from llvq.federated.split import dirichlet_split, iid_split

__all__ = [
    "COMPRESSORS",
    "DATASETS",
    "MODELS",
    "Compressor",
    "GeneratorNet",
    "LatticeCompressor",
    "NoneCompressor",
    "OlalaCompressor",
    "Payload",
    "PayloadError",
    "QSGDCompressor",
    "UniformCompressor",
    "allocate_rates",
    "build_compressor",
    "build_model",
    "dirichlet_split",
    "fpld_allocation",
    "iid_split",
    "load_federated_data",
]

"""LightningModules: one per kind of job, never one per quantizer."""

from llvq.modules.autoencoder import AutoencoderModule
from llvq.modules.federated import FederatedModule
from llvq.modules.lattice_design import LatticeDesignModule
from llvq.modules.llm_ptq import LLMPTQModule
from llvq.modules.prior import PriorModule

__all__ = ["AutoencoderModule", "FederatedModule", "LLMPTQModule", "LatticeDesignModule", "PriorModule"]

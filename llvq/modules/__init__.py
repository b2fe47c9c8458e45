"""LightningModules: one per kind of job, never one per quantizer."""

from llvq.modules.autoencoder import AutoencoderModule

__all__ = ["AutoencoderModule"]

"""Encoder and decoder stacks."""

from llvq.nn.conv import ConvDecoder, ConvEncoder, ResidualLayer

__all__ = ["ConvDecoder", "ConvEncoder", "ResidualLayer"]

"""The no-op bottleneck: the baseline for overhead measurements."""

from __future__ import annotations

from torch import Tensor

from llvq.quantizers.base import Quantizer, QuantizerOutput
from llvq.quantizers.registry import register

__all__ = ["IdentityQuantizer"]


@register("identity")
class IdentityQuantizer(Quantizer):
    """Passes latents through unchanged.

    There is no discrete code: ``codes`` are the float latents themselves (``integer_codes``
    is False), so ``decode(encode(z)) == z`` still holds and export tools can tell.

    Args:
        dim: vector width.
    """

    vector_codes = True
    integer_codes = False

    def quantize(self, z: Tensor) -> QuantizerOutput:
        return QuantizerOutput(z_q=z, codes=self.encode_impl(z), loss=z.new_zeros(()), metrics={})

    def encode_impl(self, z: Tensor) -> Tensor:
        return z.detach().clone()

    def decode(self, codes: Tensor) -> Tensor:
        return codes

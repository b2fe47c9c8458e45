"""Quantization-aware training with any registered quantizer (StatQAT's use case).

- :mod:`llvq.qat.fake_quant`: :func:`attach_fake_quant` (weights through a parametrization,
  inputs through a forward pre-hook, optional Hadamard pre-transform), :func:`calibrate`,
  :func:`detach_fake_quant`;
- :mod:`llvq.qat.callback`: :class:`QuantizationAwareTraining`, the Lightning callback that
  attaches it to any module before its optimizer is built.
"""

from llvq.qat.callback import QuantizationAwareTraining
from llvq.qat.fake_quant import (
    FakeQuantWeight,
    attach_fake_quant,
    calibrate,
    detach_fake_quant,
    fake_quant_layers,
    hadamard,
)

__all__ = ["FakeQuantWeight", "QuantizationAwareTraining", "attach_fake_quant", "calibrate",
           "detach_fake_quant", "fake_quant_layers", "hadamard"]

"""vector-quantize-pytorch's quantizers as llvq quantizers: the peers of `bench/ae_rd.py`.

An llvq plugin (``llvq.plugins.load_plugins(["vqp_plugin"])`` with ``bench/`` on the path, or
``python bench/ae_rd.py --plugins vqp_plugin``). Nothing is copied: each adapter holds the
vector-quantize-pytorch (vqp) module and only translates the contract.

| llvq name    | vqp module                                          | codes            |
|--------------|-----------------------------------------------------|------------------|
| `vqp_vq`     | `VectorQuantize` (k-means init, dead-code restart)  | index `(...)`    |
| `vqp_fsq`    | `FSQ(levels)`                                       | index `(...)`    |
| `vqp_lfq`    | `LFQ(codebook_size)`                                | index `(...)`    |
| `vqp_rvq`    | `ResidualVQ(num_quantizers, codebook_size)`         | `(..., Q)`       |
| `vqp_simvq`  | `SimVQ(codebook_size)`                              | index `(...)`    |

Settings are vqp's own defaults except where named below (k-means init and dead-code
replacement on for `VectorQuantize` / `ResidualVQ`, as vqp's README recommends). Gradients pass
vqp's way (rotation trick, projections), so check them with
``llvq.testing.check_quantizer(q, straight_through="any")``.

Notation: ``...`` leading axes, ``d`` vector width, ``N`` flattened vectors, ``Q`` residual stages.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from llvq.quantizers import Quantizer, QuantizerOutput, register
from llvq.quantizers._codebook import usage_metrics

__all__ = ["AVAILABLE", "PEERS", "missing_reason"]

#: the registry names this plugin adds when vector-quantize-pytorch is importable.
PEERS = ("vqp_vq", "vqp_fsq", "vqp_lfq", "vqp_rvq", "vqp_simvq")
AVAILABLE = importlib.util.find_spec("vector_quantize_pytorch") is not None


def missing_reason() -> str | None:
    """Why the peers are not registered, or ``None`` when they are."""
    if AVAILABLE:
        return None
    return ("vector-quantize-pytorch is not installed (pip install 'llvq[bench]' or "
            "pip install vector-quantize-pytorch); peers " + ", ".join(PEERS) + " are missing")


class _VQPAdapter(Quantizer):
    """Runs a vqp module on ``(1, N, d)`` (vqp's channel-last sequence layout) and back."""

    def _run(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """vqp forward on ``(N, d)``: quantized ``(N, d)``, indices ``(N, ...)``, loss scalar."""
        raise NotImplementedError

    def _decode_flat(self, idx: Tensor) -> Tensor:
        """vqp decode of indices ``(1, N, ...)`` to ``(1, N, d)``."""
        raise NotImplementedError

    def quantize(self, z: Tensor) -> QuantizerOutput:
        lead = tuple(z.shape[:-1])
        if z.numel() == 0:
            codes = torch.zeros(self.code_shape(lead), dtype=torch.long, device=z.device)
            return QuantizerOutput(z_q=z.clone(), codes=codes, loss=z.sum() * 0.0)
        z_q, idx, loss = self._run(z.reshape(-1, self.dim))
        codes = idx.long().reshape(self.code_shape(lead))
        first = codes[..., 0] if codes.ndim > len(lead) else codes  # (...): first stage
        metrics = usage_metrics(first, self.codebook_size)
        return QuantizerOutput(z_q=z_q.reshape(z.shape).to(z.dtype), codes=codes,
                               loss=loss.sum().to(z.dtype), metrics=metrics)

    def encode_impl(self, z: Tensor) -> Tensor:
        was = self.training
        self.eval()
        try:
            return self.quantize(z).codes
        finally:
            self.train(was)

    def decode(self, codes: Tensor) -> Tensor:
        lead = codes.shape[:len(codes.shape) - (len(self.code_shape(())))]
        flat = codes.reshape(1, -1, *self.code_shape(()))  # (1, N[, Q])
        return self._decode_flat(flat).reshape(*lead, self.dim)


if AVAILABLE:
    from vector_quantize_pytorch import FSQ, LFQ, ResidualVQ, SimVQ, VectorQuantize

    @register("vqp_vq")
    class VQPVectorQuantize(_VQPAdapter):
        """vqp ``VectorQuantize``: EMA codebook, k-means init, dead-code replacement.

        Args:
            dim: vector width ``d``.
            codebook_size: ``K``.
            decay: EMA decay (vqp default 0.8).
            commitment_weight: β (vqp default 1.0).
            kmeans_init: k-means on the first batch.
            threshold_ema_dead_code: EMA usage below which a code is replaced (0: never).
            rotation_trick: vqp's rotation-trick gradient (its default: on for ``d > 1``).
        """

        def __init__(self, dim: int, codebook_size: int = 512, decay: float = 0.8,
                     commitment_weight: float = 1.0, kmeans_init: bool = True,
                     threshold_ema_dead_code: float = 2.0, rotation_trick: bool = True) -> None:
            super().__init__(dim, codebook_size)
            self.vq = VectorQuantize(dim=dim, codebook_size=codebook_size, decay=decay,
                                     commitment_weight=commitment_weight, kmeans_init=kmeans_init,
                                     threshold_ema_dead_code=threshold_ema_dead_code,
                                     rotation_trick=rotation_trick)

        def _run(self, flat):
            q, idx, loss = self.vq(flat[None])
            return q[0], idx[0], loss

        def _decode_flat(self, idx):
            return self.vq.get_output_from_indices(idx)

    @register("vqp_fsq")
    class VQPFSQ(_VQPAdapter):
        """vqp ``FSQ`` (Mentzer et al. 2023): project ``d -> len(levels)``, bounded rounding.

        Args:
            dim: vector width ``d``.
            levels: levels per projected coordinate; ``K = prod(levels)``.
        """

        def __init__(self, dim: int, levels: Sequence[int] = (8, 5, 5, 5)) -> None:
            levels = [int(v) for v in levels]
            super().__init__(dim, math.prod(levels))
            self.levels = levels
            self.fsq = FSQ(levels=levels, dim=dim)

        def _run(self, flat):
            q, idx = self.fsq(flat[None])
            return q[0], idx[0], flat.new_zeros(())

        def _decode_flat(self, idx):
            return self.fsq.indices_to_codes(idx)

    @register("vqp_lfq")
    class VQPLFQ(_VQPAdapter):
        """vqp ``LFQ`` (Yu et al. 2023, MAGVIT-v2): sign of ``log2 K`` projected coordinates.

        Args:
            dim: vector width ``d``.
            codebook_size: ``K``, a power of two.
            entropy_loss_weight: vqp default 0.1.
            commitment_loss_weight: vqp default 0.25.
        """

        def __init__(self, dim: int, codebook_size: int = 512, entropy_loss_weight: float = 0.1,
                     commitment_loss_weight: float = 0.25) -> None:
            super().__init__(dim, codebook_size)
            self.lfq = LFQ(dim=dim, codebook_size=codebook_size,
                           entropy_loss_weight=entropy_loss_weight,
                           commitment_loss_weight=commitment_loss_weight)

        def _run(self, flat):
            q, idx, loss = self.lfq(flat[None])
            return q[0], idx[0], loss

        def _decode_flat(self, idx):
            return self.lfq.indices_to_codes(idx)

    @register("vqp_rvq")
    class VQPResidualVQ(_VQPAdapter):
        """vqp ``ResidualVQ``: ``Q`` VQ stages on the residual; codes ``(..., Q)``.

        Args:
            dim: vector width ``d``.
            codebook_size: ``K`` per stage.
            num_quantizers: ``Q``.
            kmeans_init, threshold_ema_dead_code: as for ``vqp_vq``.
        """

        def __init__(self, dim: int, codebook_size: int = 16, num_quantizers: int = 2,
                     kmeans_init: bool = True, threshold_ema_dead_code: float = 2.0) -> None:
            super().__init__(dim, codebook_size)
            self.num_quantizers = int(num_quantizers)
            self.rvq = ResidualVQ(dim=dim, codebook_size=codebook_size,
                                  num_quantizers=num_quantizers, kmeans_init=kmeans_init,
                                  threshold_ema_dead_code=threshold_ema_dead_code)

        def code_shape(self, lead):
            return (*lead, self.num_quantizers)

        def _run(self, flat):
            q, idx, losses = self.rvq(flat[None])
            return q[0], idx[0], losses

        def _decode_flat(self, idx):
            return self.rvq.get_output_from_indices(idx)

    @register("vqp_simvq")
    class VQPSimVQ(_VQPAdapter):
        """vqp ``SimVQ`` (Zhu et al. 2024): a frozen random codebook through a learned linear map.

        Args:
            dim: vector width ``d``.
            codebook_size: ``K``.
        """

        def __init__(self, dim: int, codebook_size: int = 512) -> None:
            super().__init__(dim, codebook_size)
            self.simvq = SimVQ(dim=dim, codebook_size=codebook_size)

        def _run(self, flat):
            q, idx, loss = self.simvq(flat[None])
            return q[0], idx[0], loss

        def _decode_flat(self, idx):
            return self.simvq.indices_to_codes(idx)

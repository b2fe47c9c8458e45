"""What a client sends: the payload, its validation on the server, and the block layout of ``h``.

Notation:
    P  coordinates of the update ``h`` (padded with zeros to a multiple of L)
    L  block size (the lattice dimension);  m = ceil(P / L) blocks
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["FLOAT_BITS", "Payload", "PayloadError", "check_side", "to_blocks"]

#: bits of one side-information value as stored (fp32).
FLOAT_BITS = 32


class PayloadError(ValueError):
    """A payload the server refuses: wrong shape, out-of-range index, non-finite or singular side info."""


@dataclass
class Payload:
    """What a client sends.

    Attributes:
        kind: the compressor's name.
        numel: ``P``, coordinates of the update.
        indices: ``(m,)`` int64 codeword indices (``none``: empty).
        side: side information as stored (fp32 tensors: ``zeta``, ``generator``, ``norm``, ``values``).
        bits: bits sent, indices plus side information.
        overloaded: overloaded blocks.
        blocks: ``m``.
        stats: client-side diagnostics for logging (not sent, not counted).
    """

    kind: str
    numel: int
    indices: Tensor
    side: dict[str, Tensor] = field(default_factory=dict)
    bits: int = 0
    overloaded: int = 0
    blocks: int = 0
    stats: dict[str, float] = field(default_factory=dict)


def to_blocks(h: Tensor, block: int) -> Tensor:
    """``h`` flattened, as float64, zero-padded to ``(m, L)`` blocks."""
    flat = h.detach().reshape(-1).double()
    pad = (-flat.numel()) % block
    return torch.cat([flat, flat.new_zeros(pad)]).view(-1, block)  # (m, L)


def check_side(p: Payload, key: str, shape: tuple[int, ...]) -> Tensor:
    """The side information ``key`` of ``p`` as float64, after checking presence, shape and
    finiteness.

    Raises:
        PayloadError: missing, wrong shape or non-finite.
    """
    if key not in p.side:
        raise PayloadError(f"payload of '{p.kind}' lacks side information '{key}'")
    t = p.side[key]
    if not isinstance(t, Tensor) or tuple(t.shape) != shape:
        raise PayloadError(f"side information '{key}' must have shape {shape}, got "
                           f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    if not bool(torch.isfinite(t).all()):
        raise PayloadError(f"side information '{key}' has non-finite values")
    return t.double()

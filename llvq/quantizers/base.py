"""The quantizer contract shared by every bottleneck in llvq.

Notation (einops style):
    ...  any number of leading (batch, spatial) axes
    d    the quantizer's vector width ``dim``

A quantizer maps channel-last vectors ``z: (..., d)`` to a :class:`QuantizerOutput` whose
``z_q`` has the same shape and passes gradients straight through to ``z``. ``codes`` are
integers: ``(...)`` indices for a finite codebook, ``(..., d)`` lattice coordinates for a
lattice. ``decode(encode(z)) == forward(z).z_q`` holds in eval mode.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

__all__ = ["MAX_CODE", "Quantizer", "QuantizerOutput", "check_code_range", "check_latents",
           "check_weight", "deferred"]

#: the largest |integer code| a lattice quantizer hands out: integers up to 2^53 are exact in
#: float64 (where the lattice decoders compute) and far inside int64.
MAX_CODE = 2**53


@dataclass
class QuantizerOutput:
    """What every quantizer's ``forward`` returns.

    Attributes:
        z_q: ``(..., d)`` quantized vectors; straight-through, so gradients reach ``z``.
        codes: integer codes, ``(...)`` for finite codebooks or ``(..., d)`` for lattices.
        loss: scalar training loss of the quantizer itself (0 when it has none).
        metrics: scalar tensors to log (commitment, perplexity, overload, ...).
    """

    z_q: Tensor
    codes: Tensor
    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def deferred(t: Tensor) -> bool:
    """Whether value checks on ``t`` are gathered on its device instead of read at once.

    Reading a device tensor's value on the host (``bool(t)``) waits for the device, so on a GPU
    the NaN/range checks are accumulated there and read every :attr:`Quantizer.check_every`
    calls; on CPU reading is free and every call checks.
    """
    return t.device.type != "cpu"


def check_latents(z: Tensor, dim: int, name: str, quantizer: Quantizer | None = None) -> None:
    """Raise one clear error if ``z`` is not a finite float tensor of shape ``(..., dim)``.

    Args:
        z: the latents handed to a quantizer.
        dim: the quantizer's configured vector width.
        name: the quantizer's registry name, used in the message.
        quantizer: when given and ``z`` is on a GPU, the finite check is handed to its
            :meth:`Quantizer.guard` (no host-device sync now; the error comes at the next read).
            Shape and dtype are checked at once either way.
    """
    if not isinstance(z, Tensor) or not z.is_floating_point():
        raise TypeError(f"quantizer '{name}' expects a float tensor, got {type(z).__name__}"
                        f"{'' if not isinstance(z, Tensor) else ' of dtype ' + str(z.dtype)}")
    if z.ndim == 0 or z.shape[-1] != dim:
        raise ValueError(
            f"quantizer '{name}' was built with dim={dim} but received latents of shape "
            f"{tuple(z.shape)} (last axis must be {dim}); set the quantizer's `dim` "
            f"(model.latent_dim) to match the encoder output")
    if quantizer is not None and deferred(z):
        quantizer.guard(~torch.isfinite(z).all(), (
            f"quantizer '{name}' received non-finite value(s) (NaN/Inf) in its input; the "
            f"encoder diverged -- lower the learning rate or check the data"))
        return
    if not bool(torch.isfinite(z).all()):
        bad = int((~torch.isfinite(z)).sum())
        raise ValueError(
            f"quantizer '{name}' received {bad} non-finite value(s) (NaN/Inf) in its input; "
            f"the encoder diverged -- lower the learning rate or check the data")


def check_code_range(coords: Tensor, name: str, setting: str,
                     quantizer: Quantizer | None = None) -> None:
    """Raise one clear error if float lattice coordinates do not fit exact int64 codes.

    Args:
        coords: the real-valued lattice coordinates about to be rounded to integer codes.
        name: the quantizer's registry name, used in the message.
        setting: what the user can change (e.g. ``"`scale`"``), used in the message.
        quantizer: when given and ``coords`` is on a GPU, the check goes to its
            :meth:`Quantizer.guard` instead of synchronising now.
    """
    reach = coords.detach().abs().amax() if coords.numel() else coords.new_zeros(())
    if quantizer is not None and deferred(coords):
        quantizer.guard(~(reach <= MAX_CODE), (
            f"quantizer '{name}': the latents reached lattice coordinates beyond +-2^53, where "
            f"integer codes stop being exact (and soon overflow int64); the encoder output is "
            f"far too large for the lattice -- raise {setting} or normalise the latents"))
        return
    if not bool(reach <= MAX_CODE):  # also true for an Inf/NaN from an overflowing division
        raise ValueError(
            f"quantizer '{name}': the latents reach lattice coordinates of {float(reach):.3g}, "
            f"beyond +-2^53, where integer codes stop being exact (and soon overflow int64); "
            f"the encoder output is far too large for the lattice -- raise {setting} or "
            f"normalise the latents")


def check_weight(value: float, setting: str, name: str) -> float:
    """``value`` as a float, or one clear error if it is not a finite number >= 0.

    Args:
        value: a loss weight such as the commitment weight ``beta``.
        setting: the option's name (``"beta"``), used in the message.
        name: the quantizer's registry name, used in the message.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"quantizer '{name}': `{setting}` must be a finite number >= 0 "
                         f"(model.quantizer.{setting}), got {value!r}")
    return float(value)


class Quantizer(nn.Module, ABC):
    """Base class of every registered bottleneck.

    Subclasses implement :meth:`quantize` (the training forward on validated input),
    :meth:`encode_impl` and :meth:`decode`. The base class validates the input once.

    Contract fields every caller may read (never found with ``getattr``):
        ``dim``: the vector width.
        ``codebook_size``: the number of distinct codes per code element when finite (VQ: ``K``;
        ``bounded_lattice``: ``2^(R n)`` per block), ``None`` for an unbounded lattice code.
        ``bits_per_vector``: the nominal rate of one ``dim``-vector in bits (fixed-length
        codes, side information excluded), ``None`` when the code is unbounded.

    Args:
        dim: width of the vectors being quantized (the last axis of ``z``).
        codebook_size: size of a finite codebook (``None``: unbounded codes).
    """

    #: registry name, set by :func:`llvq.quantizers.register`.
    name: ClassVar[str] = "quantizer"
    #: True when codes are integer vectors ``(..., d)`` (lattices), False for indices ``(...)``.
    vector_codes: ClassVar[bool] = False
    #: False only for ``identity``, whose "codes" are the float latents themselves.
    integer_codes: ClassVar[bool] = True
    #: on a GPU, value checks (NaN/Inf latents, code range) are gathered on the device by
    #: :meth:`guard` and read back on the first call and then once every ``check_every`` calls
    #: to :meth:`forward` (each read waits for the device); on CPU every call checks at once.
    check_every: int = 100

    def __init__(self, dim: int, codebook_size: int | None = None) -> None:
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"quantizer '{self.name}': `dim` must be a positive integer, got {dim!r}")
        self.dim = dim
        self.codebook_size: int | None = codebook_size
        self._forward_calls = 0
        self._pending: dict[str, Tensor] = {}  # error message -> "went wrong" flag on the device

    def guard(self, bad: Tensor, message: str) -> None:
        """Raise ``ValueError(message)`` if the 0-d bool ``bad`` is true, without a sync.

        On CPU it is read at once. On a GPU the flag is OR-ed into a pending flag on the device
        and read by :meth:`flush_checks` (on the first forward call, then every
        :attr:`check_every` calls, and in :meth:`encode`), so a check costs no host-device
        synchronisation per step and no error is lost: it comes at most ``check_every`` calls
        late.

        Args:
            bad: a 0-d bool tensor, true when the check failed.
            message: the error text.
        """
        if not deferred(bad):
            if bool(bad):
                raise ValueError(message)
            return
        prev = self._pending.get(message)
        self._pending[message] = bad if prev is None else prev | bad

    def flush_checks(self) -> None:
        """Read the checks gathered by :meth:`guard` (one sync) and raise the first that failed."""
        pending, self._pending = self._pending, {}
        for message, bad in pending.items():
            if bool(bad):
                raise ValueError(message)

    @property
    def bits_per_vector(self) -> float | None:
        """Nominal bits per ``dim``-vector: ``codes per vector * log2(codebook_size)``.

        ``None`` for unbounded codes; quantizers with another layout override it.
        """
        if self.codebook_size is None:
            return None
        per_vector = math.prod(self.code_shape(())) if self.vector_codes else \
            math.prod(self.code_shape((1,)))
        return per_vector * math.log2(self.codebook_size)

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Validate ``z`` and quantize it.

        An empty batch (no vectors) returns empty ``z_q`` and codes, a loss of 0 and metrics of 0
        where a mean over nothing would be NaN (``0/0``), so one empty batch does not turn the
        running averages into NaN.
        """
        self._forward_calls += 1
        check_latents(z, self.dim, self.name, quantizer=self)
        out = self.quantize(z)
        if self._pending and (self._forward_calls - 1) % self.check_every == 0:
            self.flush_checks()
        if z.shape[:-1].numel() == 0:  # a mean over nothing is 0 here, not NaN
            out.loss = torch.nan_to_num(out.loss, nan=0.0)
            out.metrics = {k: torch.nan_to_num(v, nan=0.0) for k, v in out.metrics.items()}
        return out

    @abstractmethod
    def quantize(self, z: Tensor) -> QuantizerOutput:
        """Quantize validated latents ``(..., d)``; see :class:`QuantizerOutput`."""

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tensor:
        """Integer codes of ``z`` without gradient; deterministic in eval mode.

        Every value check runs before the codes are returned, also on a GPU: codes leave here.
        """
        check_latents(z, self.dim, self.name, quantizer=self)
        codes = self.encode_impl(z)
        self.flush_checks()
        return codes

    @abstractmethod
    def encode_impl(self, z: Tensor) -> Tensor:
        """Codes of validated latents."""

    @abstractmethod
    def decode(self, codes: Tensor) -> Tensor:
        """Quantized vectors ``(..., d)`` from integer codes."""

    def code_shape(self, lead: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the codes of latents ``(*lead, d)``: ``(*lead, d)`` for lattice vectors,
        ``lead`` for one index per vector; a product of finite codes overrides it."""
        return (*lead, self.dim) if self.vector_codes else tuple(lead)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

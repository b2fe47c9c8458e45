"""The quantizer contract as checks a plugin author can run on their own quantizer.

>>> from llvq.testing import check_quantizer
>>> check_quantizer(MyQuantizer(dim=16))                            # straight-through identity
>>> check_quantizer(RotationVQ(dim=16), straight_through="any")     # any finite non-zero gradient

:func:`check_quantizer` raises :class:`AssertionError` (or the quantizer's own error) naming
the first broken rule of the contract (``llvq.quantizers.base``):

- ``forward(z)`` returns a :class:`~llvq.quantizers.QuantizerOutput`; ``z_q`` has the shape and
  dtype of ``z``; ``codes`` have the shape ``q.code_shape(lead)`` and dtype int64 (unless
  ``integer_codes = False``); ``loss`` is a finite scalar; every metric is a scalar tensor;
- gradients reach ``z`` through ``z_q``: exactly the identity (``straight_through="exact"``,
  ``z + (q − z).detach()``) or merely finite and non-zero (``"any"``: rotation tricks,
  FSQ/LFQ projections); the quantizer's own loss, when it has a gradient, reaches ``z`` or a
  parameter;
- in eval mode ``encode`` is deterministic and ``decode(encode(z)) == forward(z).z_q``;
- contract fields: ``dim`` a positive int, ``codebook_size`` a positive int or ``None``,
  ``bits_per_vector`` a positive finite number or ``None``, ``vector_codes`` and
  ``integer_codes`` booleans, ``name`` a string;
- a NaN in ``z`` and a wrong last axis raise ``ValueError``;
- optionally (``empty_batch=True``) an empty batch ``(0, dim)`` passes through with the right
  shapes, a finite loss and finite metrics (the base ``forward`` turns a mean over nothing
  into 0), in training and in eval mode;
- optionally (``dtypes=(torch.float16, ...)``) latents of each dtype are quantized with ``z_q``
  in that dtype, int64 codes, a finite loss, and ``decode(encode(z))`` close to ``z_q`` in eval
  mode (the quantizer casts inside), or are refused with a ``TypeError``/``ValueError`` that
  names the dtype.

The quantizer passed in is not changed: the checks run on a deep copy.

This module imports nothing of llvq above :mod:`llvq.quantizers`.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from torch import Tensor
from torch.testing import assert_close

from llvq.quantizers.base import Quantizer, QuantizerOutput

__all__ = ["check_quantizer", "latents"]


def latents(dim: int, batch_shape: tuple[int, ...] = (2, 3, 4), seed: int = 0,
            scale: float = 2.0) -> Tensor:
    """Seeded Gaussian latents ``(*batch_shape, dim)`` scaled by ``scale``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*batch_shape, dim, generator=g) * scale


def _fail(q: Quantizer, message: str) -> AssertionError:
    return AssertionError(f"quantizer '{q.name}' ({type(q).__module__}.{type(q).__qualname__}): "
                          f"{message}")


def _check_fields(q: Quantizer) -> None:
    if not isinstance(q, Quantizer):
        raise TypeError(f"{type(q).__name__} is not a llvq.quantizers.Quantizer subclass")
    if not isinstance(q.name, str) or not q.name:
        raise _fail(q, f"`name` must be a non-empty string, got {q.name!r}")
    for field in ("vector_codes", "integer_codes"):
        if not isinstance(getattr(q, field), bool):
            raise _fail(q, f"`{field}` must be a bool, got {getattr(q, field)!r}")
    if not isinstance(q.dim, int) or isinstance(q.dim, bool) or q.dim < 1:
        raise _fail(q, f"`dim` must be a positive int, got {q.dim!r}")
    size = q.codebook_size
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise _fail(q, f"`codebook_size` must be a positive int or None, got {size!r}")
    bits = q.bits_per_vector
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, (int, float))
                             or not math.isfinite(bits) or bits < 0):
        raise _fail(q, f"`bits_per_vector` must be a finite number >= 0 or None, got {bits!r}")


def _check_output(q: Quantizer, z: Tensor, out: QuantizerOutput) -> None:
    if not isinstance(out, QuantizerOutput):
        raise _fail(q, f"forward must return a QuantizerOutput, got {type(out).__name__}")
    if out.z_q.shape != z.shape or out.z_q.dtype != z.dtype:
        raise _fail(q, f"z_q is {tuple(out.z_q.shape)} {out.z_q.dtype}, expected the input's "
                       f"{tuple(z.shape)} {z.dtype}")
    expected = tuple(q.code_shape(tuple(z.shape[:-1])))
    if tuple(out.codes.shape) != expected:
        raise _fail(q, f"codes have shape {tuple(out.codes.shape)}, but code_shape(lead) says "
                       f"{expected}; override `code_shape` if the layout is different")
    if q.integer_codes and out.codes.dtype != torch.int64:
        raise _fail(q, f"codes must be int64, got {out.codes.dtype} (set integer_codes = False "
                       "only when the codes are the float latents)")
    if not isinstance(out.loss, Tensor) or out.loss.ndim != 0 or not torch.isfinite(out.loss):
        raise _fail(q, f"loss must be a finite scalar tensor, got {out.loss!r}")
    for key, value in out.metrics.items():
        if not isinstance(value, Tensor) or value.ndim != 0:
            raise _fail(q, f"metric {key!r} must be a scalar tensor, got {value!r}")


def _check_gradient(q: Quantizer, z0: Tensor, straight_through: str) -> None:
    z = z0.clone().requires_grad_(True)
    out = q(z)
    weights = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    if out.z_q.requires_grad:
        (out.z_q * weights).sum().backward()
    if z.grad is None:
        raise _fail(q, "no gradient reaches z through z_q; pass it straight through "
                       "(z + (q - z).detach())")
    if not bool(torch.isfinite(z.grad).all()):
        raise _fail(q, "the gradient reaching z through z_q is not finite")
    if straight_through == "exact":
        try:
            assert_close(z.grad, weights)
        except AssertionError as err:
            raise _fail(q, "d z_q / d z is not the identity (straight_through='exact'); pass "
                           "straight_through='any' if that is by design\n" + str(err)) from None
    elif not bool(z.grad.abs().sum() > 0):
        raise _fail(q, "the gradient reaching z through z_q is zero everywhere")

    z = z0.clone().requires_grad_(True)
    q.zero_grad(set_to_none=True)
    out = q(z)
    if out.loss.requires_grad:
        out.loss.backward()
        if z.grad is None and all(p.grad is None for p in q.parameters()):
            raise _fail(q, "the quantizer's loss has a graph but reaches neither z nor a "
                           "parameter")


def _check_round_trip(q: Quantizer, z: Tensor) -> None:
    with torch.no_grad():
        z_q = q(z).z_q
    codes = q.encode(z)
    try:
        assert_close(q.decode(codes), z_q)
    except AssertionError as err:
        raise _fail(q, "decode(encode(z)) differs from forward(z).z_q in eval mode\n"
                       + str(err)) from None
    if not torch.equal(q.encode(z), codes):
        raise _fail(q, "encode is not deterministic in eval mode")


def _check_rejects(q: Quantizer, z: Tensor) -> None:
    bad = z.clone()
    bad.view(-1)[0] = float("nan")
    try:
        q(bad)
    except ValueError:
        pass
    else:
        raise _fail(q, "a NaN in z was accepted; call check_latents (the base forward does)")
    wrong = torch.zeros(*z.shape[:-1], q.dim + 1)
    try:
        q(wrong)
    except ValueError:
        pass
    else:
        raise _fail(q, f"latents of width {q.dim + 1} were accepted by a dim={q.dim} quantizer")


def _check_empty(q: Quantizer) -> None:
    empty = torch.zeros(0, q.dim)
    for mode in ("train", "eval"):
        getattr(q, mode)()
        out = q(empty)
        _check_output(q, empty, out)
        bad = [k for k, v in out.metrics.items() if not bool(torch.isfinite(v).all())]
        if bad:
            raise _fail(q, f"an empty batch gives non-finite metrics {bad} ({mode} mode)")
    codes = q.encode(empty)
    if tuple(q.decode(codes).shape) != (0, q.dim):
        raise _fail(q, "decode(encode(z)) of an empty batch is not (0, dim)")


def _check_dtype(q: Quantizer, z: Tensor, dtype: torch.dtype) -> None:
    zd = z.to(dtype)
    try:
        out = q.train()(zd)
    except (TypeError, ValueError) as err:
        if str(dtype).removeprefix("torch.") not in str(err):
            raise _fail(q, f"{dtype} latents were refused without naming the dtype: "
                           f"{err}") from None
        return
    _check_output(q, zd, out)
    q.eval()
    with torch.no_grad():
        z_q = q(zd).z_q
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-5)
    try:
        assert_close(q.decode(q.encode(zd)).to(dtype), z_q, rtol=tol, atol=tol)
    except AssertionError as err:
        raise _fail(q, f"decode(encode(z)) differs from forward(z).z_q for {dtype} latents\n"
                       + str(err)) from None


def check_quantizer(q: Quantizer, straight_through: Literal["exact", "any"] = "exact",
                    batch_shape: tuple[int, ...] = (2, 3, 4), seed: int = 0,
                    empty_batch: bool = False, dtypes: tuple[torch.dtype, ...] = ()) -> None:
    """Check that ``q`` honours the llvq quantizer contract; raise ``AssertionError`` if not.

    Args:
        q: the quantizer (not modified: the checks run on a deep copy).
        straight_through: ``"exact"``: ``d z_q / d z`` must be the identity; ``"any"``: the
            gradient through ``z_q`` must be finite and not all zero.
        batch_shape: the leading axes of the test latents ``(*batch_shape, dim)``.
        seed: seed of the test latents.
        empty_batch: also run forward, encode and decode on a ``(0, dim)`` batch.
        dtypes: also quantize latents of these dtypes (e.g. ``torch.float16``).
    """
    if straight_through not in ("exact", "any"):
        raise ValueError(f"straight_through must be 'exact' or 'any', got {straight_through!r}")
    _check_fields(q)
    q = copy.deepcopy(q).train()
    z = latents(q.dim, batch_shape, seed)
    _check_output(q, z, q(z))
    _check_gradient(q, z, straight_through)
    _check_rejects(q, z)
    q.eval()
    _check_output(q, z, q(z))
    _check_round_trip(q, latents(q.dim, batch_shape, seed + 1))
    if empty_batch:
        _check_empty(q)
    for dtype in dtypes:
        _check_dtype(q, latents(q.dim, batch_shape, seed + 2), dtype)

"""The normalize–rotate–store front end shared by the KV-cache quantizers (``fibquant``,
``turbo_scalar``, ``turbo_lattice``) and the canonical source it produces.

Notation (einops style):
    ...  leading axes
    d    vector width ``dim``
    k    block width;  m = d / k blocks

A vector ``z`` is stored as its norm ``‖z‖`` and the unit direction rotated by one shared,
seeded Haar-random orthogonal matrix ``R``: ``u = R z / ‖z‖``. After the rotation ``u`` is
uniform on the sphere ``S^(d-1)`` whatever ``z`` was, so a quantizer for ``u`` needs no
calibration data (TurboQuant's observation; FibQuant section 2). A block of ``k``
consecutive coordinates of ``u`` is a *spherical-Beta* source (FibQuant eq. 2): its direction is
uniform on ``S^(k-1)`` and its squared radius is ``Beta(k/2, (d-k)/2)``, independent of the
direction; one coordinate (``k = 1``) has the density ``∝ (1 - t²)^((d-3)/2)`` on ``[-1, 1]``.

The norm is stored as the bit pattern of a float16 (``norm_dtype="float16"``, 16 bits per
vector; ``"bfloat16"`` 16 bits with float32's range; ``"float32"`` 32 bits) in the last code
slot, so ``decode(encode(z))`` is exact and the norm's bits are counted in
``bits_per_vector``. A norm the chosen dtype cannot hold raises an error naming the setting.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from llvq.quantizers.base import Quantizer, QuantizerOutput

__all__ = ["NORM_DTYPES", "SphereFrontEnd", "SphereQuantizer", "disk_cached", "haar_rotation",
           "sphere_block_samples"]

#: norm storage formats: name -> (torch dtype, integer view dtype, bits)
NORM_DTYPES: dict[str, tuple[torch.dtype, torch.dtype, int]] = {
    "float16": (torch.float16, torch.int16, 16),
    "bfloat16": (torch.bfloat16, torch.int16, 16),
    "float32": (torch.float32, torch.int32, 32),
}


def disk_cached(kind: str, key: str, make: Callable[[], Tensor]) -> Tensor:
    """``make()``, stored under ``$LLVQ_CACHE/<kind>/<key>.pt`` (default ``<tmp>/llvq-cache``).

    For deterministic tables that take seconds to build (codebooks, scales): a cache, never a
    setting; a broken or unwritable cache is rebuilt or skipped.
    """
    root = Path(os.environ.get("LLVQ_CACHE", Path(tempfile.gettempdir()) / "llvq-cache"))
    path = root / kind / f"{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception as err:  # noqa: BLE001 - a damaged cache entry is rebuilt below
            warnings.warn(f"ignoring the unreadable cache file {path} ({err}); rebuilding it",
                          stacklevel=2)
    value = make()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(value, tmp)
        tmp.replace(path)
    except OSError:
        pass
    return value


@lru_cache(maxsize=64)
def _haar(dim: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(int(seed))
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r))  # sign fix: Haar-distributed (Mezzadri 2007)


def haar_rotation(dim: int, seed: int) -> Tensor:
    """A seeded Haar-random ``(dim, dim)`` orthogonal matrix (float64, the same on every machine)."""
    return _haar(int(dim), int(seed)).clone()


def sphere_block_samples(dim: int, block: int, num: int, seed: int) -> Tensor:
    """``num`` samples ``(num, block)`` float64 of the first ``block`` coordinates of a uniform
    point on ``S^(dim-1)``: the canonical spherical-Beta source (no data involved)."""
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn(num, dim, generator=g, dtype=torch.float64)
    return x[:, :block] / x.norm(dim=1, keepdim=True)


class SphereFrontEnd(torch.nn.Module):
    """Normalize, rotate (``u = R z / ‖z‖``) and store the norm as a code.

    Args:
        dim: vector width ``d``.
        seed: seed of the shared rotation ``R``.
        norm_dtype: ``"float16"``, ``"bfloat16"`` or ``"float32"``: how the norm is stored.
        owner: the quantizer's registry name, for messages.
    """

    def __init__(self, dim: int, seed: int, norm_dtype: str, owner: str) -> None:
        super().__init__()
        if norm_dtype not in NORM_DTYPES:
            raise ValueError(f"quantizer '{owner}': unknown norm_dtype={norm_dtype!r}; choose one "
                             f"of {sorted(NORM_DTYPES)}")
        self.owner, self.norm_dtype = owner, norm_dtype
        self.float_dtype, self.int_dtype, self.norm_bits = NORM_DTYPES[norm_dtype]
        self.register_buffer("rotation", haar_rotation(dim, seed).float())  # (d, d), rows: R

    def norm_codes(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(norm code (...,) int64, stored norm (...,) float32)`` of ``z: (..., d)``."""
        norm = z.detach().float().norm(dim=-1)
        stored = norm.to(self.float_dtype)
        if not bool(torch.isfinite(stored).all()):
            raise ValueError(f"quantizer '{self.owner}': a vector norm ({float(norm.max()):.4g}) "
                             f"overflows norm_dtype={self.norm_dtype}; set norm_dtype='bfloat16' or "
                             f"'float32'")
        return stored.view(self.int_dtype).long(), stored.float()

    def norms(self, code: Tensor) -> Tensor:
        """Stored norms (float32) from norm codes (int64)."""
        return code.to(self.int_dtype).view(self.float_dtype).float()

    def rotate(self, z: Tensor, norm: Tensor) -> Tensor:
        """``u = R z / ‖z‖`` as float32 ``(..., d)`` (zero for a zero vector)."""
        unit = z.detach().float() / norm.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(-1)
        return unit @ self.rotation.T

    def unrotate(self, u: Tensor, norm: Tensor) -> Tensor:
        """``‖z‖ Rᵀ u`` (float32 ``(..., d)``)."""
        return (u @ self.rotation) * norm.unsqueeze(-1)


class SphereQuantizer(Quantizer):
    """Base of the quantizers built on :class:`SphereFrontEnd`: codes ``(..., n + 1)``, ``n``
    indices in ``[0, codebook_size)`` and the norm code last; straight-through quantization.

    A subclass sets ``self.front``, ``self.codebook_size`` and ``self.code_width`` (``n``) and
    implements ``encode_impl`` and ``decode`` (reading the indices with :meth:`indices`).
    """

    front: SphereFrontEnd
    codebook_size: int
    code_width: int

    def code_shape(self, lead: tuple[int, ...]) -> tuple[int, ...]:
        return (*lead, self.code_width + 1)

    def indices(self, codes: Tensor) -> Tensor:
        """The index part of ``codes`` after checking its dtype, width and range."""
        if codes.is_floating_point() or codes.shape[-1:] != (self.code_width + 1,):
            raise ValueError(f"quantizer '{self.name}': codes must be integers of shape "
                             f"(..., {self.code_width + 1}), got {codes.dtype} {tuple(codes.shape)}")
        idx = codes[..., :-1]
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.codebook_size):
            raise ValueError(f"quantizer '{self.name}': indices outside [0, {self.codebook_size})")
        return idx

    def quantize(self, z: Tensor) -> QuantizerOutput:
        codes = self.encode_impl(z)
        q = self.decode(codes).to(z.dtype)
        err = (q - z.detach()).pow(2).sum(-1)
        rel = err / z.detach().pow(2).sum(-1).clamp_min(1e-30)
        metrics = {"relative_mse": rel.mean() if rel.numel() else z.new_zeros(()),
                   "bits_per_coordinate": z.new_tensor(self.bits_per_vector / self.dim)}
        return QuantizerOutput(z + (q - z).detach(), codes, z.new_zeros(()), metrics)

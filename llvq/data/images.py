"""Image conversions shared by the datamodules: channel count, square size, PIL to tensor.

Every datamodule delivers ``x`` as float32 ``(C, S, S)`` in ``[0, 1]`` with ``C`` the
configured ``channels`` (1 or 3) and ``S`` the configured ``image_size``. Gray to RGB
repeats the plane; RGB to gray uses the ITU-R BT.601 luma weights, the same as PIL's
``convert("L")``, so tensor and PIL paths agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.transforms.functional import pil_to_tensor

__all__ = ["LUMA_WEIGHTS", "PILToSquareTensor", "pil_to_square_uint8", "resize", "to_channels"]

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")


def to_channels(x: Tensor, channels: int) -> Tensor:
    """Convert a float image batch to ``channels`` planes.

    Args:
        x: ``(..., C, H, W)`` float tensor with ``C`` in {1, 3, 4}; a fourth (alpha) plane is dropped.
        channels: 1 (gray) or 3 (RGB).

    Returns:
        ``(..., channels, H, W)`` tensor of the same dtype.
    """
    if x.shape[-3] == 4:
        x = x[..., :3, :, :]
    have = x.shape[-3]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
    if have == 3 and channels == 1:
        weights = x.new_tensor(LUMA_WEIGHTS).view(3, 1, 1)
        return (x * weights).sum(dim=-3, keepdim=True)
    raise ValueError(f"cannot convert an image with {have} channels to {channels} channels")


def resize(x: Tensor, size: int) -> Tensor:
    """Center-crop the largest square and resize it bilinearly (antialiased) to ``size``.

    Args:
        x: ``(C, H, W)`` or ``(B, C, H, W)`` float tensor in ``[0, 1]``.
        size: side of the square output in pixels.

    Returns:
        ``(..., C, size, size)`` float tensor in ``[0, 1]``; ``x`` itself when already that size.
    """
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top : top + side, left : left + side]
    if side == size:
        return x
    batched = x.unsqueeze(0) if x.dim() == 3 else x  # (B, C, side, side)
    out = F.interpolate(
        batched, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    out = out.clamp_(0.0, 1.0)  # bilinear weights are convex; this only removes rounding noise
    return out[0] if x.dim() == 3 else out


def pil_to_square_uint8(image: Image.Image, channels: int, size: int | None) -> Tensor:
    """Convert a PIL image to a ``(channels, size, size)`` uint8 tensor.

    Args:
        image: any PIL image (gray, RGB, RGBA, palette, ...).
        channels: 1 (mode "L") or 3 (mode "RGB").
        size: square side; the image is center-cropped to a square and resized with PIL's
            antialiased bilinear filter. ``None`` keeps the native size (no crop).

    Returns:
        uint8 tensor ``(channels, H, W)``.
    """
    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None and image.size != (size, size):
        image = ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR)
    return pil_to_tensor(image)


class PILToSquareTensor:
    """Transform for torchvision datasets: PIL image -> float32 ``(channels, size, size)`` in [0, 1].

    Args:
        channels: 1 or 3.
        size: side of the square output.
    """

    def __init__(self, channels: int, size: int) -> None:
        self.channels = channels
        self.size = size

    def __call__(self, image: Image.Image) -> Tensor:
        return pil_to_square_uint8(image, self.channels, self.size).to(torch.float32).div_(255.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channels={self.channels}, size={self.size})"

"""The LL-VQ-VAE paper's convolutional encoder and decoder (section 4.1).

Encoder: strided 4×4 convolutions with widths ``channels`` (paper: 16 → 32), a 3×3
convolution, ``num_residual`` residual layers and a 1×1 convolution to the latent width ``D``;
LeakyReLU after each layer. The decoder mirrors it with transposed 4×4 convolutions.
A residual layer is Conv3×3 (no bias) → ReLU → Conv1×1 (no bias), added to its input. The paper
writes "kernel size 1, padding 1" for the second convolution, which would change the spatial
size; we use padding 0 there.

Each strided stage halves the spatial size: images ``(B, C, H, W)`` map to latents
``(B, D, H / 2^S, W / 2^S)`` with ``S = len(channels)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

__all__ = ["ConvDecoder", "ConvEncoder", "ResidualLayer"]


def _check_channels(channels: Sequence[int], what: str) -> list[int]:
    chans = [int(c) for c in channels]
    if not chans or any(c < 1 for c in chans):
        raise ValueError(f"{what}: `channels` must be a non-empty list of positive widths, got {channels}")
    return chans


class ResidualLayer(nn.Module):
    """``x + Conv1×1(ReLU(Conv3×3(x)))`` without biases (LL-VQ-VAE section 4.1)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.ReLU(),
            nn.Conv2d(width, width, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class ConvEncoder(nn.Module):
    """Images ``(B, in_channels, H, W)`` → latents ``(B, latent_dim, H/2^S, W/2^S)``.

    Args:
        in_channels: image channels.
        latent_dim: output width ``D`` (the quantizer's ``dim``).
        channels: widths of the strided 4×4 stages (paper: ``[16, 32]``).
        num_residual: residual layers after the 3×3 convolution (paper: 2).
    """

    def __init__(self, in_channels: int, latent_dim: int, channels: Sequence[int] = (16, 32),
                 num_residual: int = 2) -> None:
        super().__init__()
        chans = _check_channels(channels, "encoder")
        layers: list[nn.Module] = []
        prev = in_channels
        for width in chans:
            layers += [nn.Conv2d(prev, width, 4, stride=2, padding=1), nn.LeakyReLU()]
            prev = width
        layers += [nn.Conv2d(prev, prev, 3, padding=1), nn.LeakyReLU()]
        for _ in range(num_residual):
            layers += [ResidualLayer(prev), nn.LeakyReLU()]
        layers.append(nn.Conv2d(prev, latent_dim, 1))
        self.net = nn.Sequential(*layers)
        self.downsample = 2 ** len(chans)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """Latents ``(B, latent_dim, h, w)`` → images ``(B, out_channels, h·2^S, w·2^S)``.

    Args:
        out_channels: image channels.
        latent_dim: input width ``D``.
        channels: the encoder's stage widths; the decoder runs them in reverse.
        num_residual: residual layers after the first 3×3 convolution.
    """

    def __init__(self, out_channels: int, latent_dim: int, channels: Sequence[int] = (16, 32),
                 num_residual: int = 2) -> None:
        super().__init__()
        chans = _check_channels(channels, "decoder")[::-1]  # e.g. [32, 16]
        layers: list[nn.Module] = [nn.Conv2d(latent_dim, chans[0], 3, padding=1), nn.LeakyReLU()]
        for _ in range(num_residual):
            layers += [ResidualLayer(chans[0]), nn.LeakyReLU()]
        for width, nxt in pairwise(chans):
            layers += [nn.ConvTranspose2d(width, nxt, 4, stride=2, padding=1), nn.LeakyReLU()]
        layers.append(nn.ConvTranspose2d(chans[-1], out_channels, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)

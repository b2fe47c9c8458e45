"""Autoencoder with a pluggable quantizer: VQ-VAE, VQ-VAE (EMA), LL-VQ-VAE, lattice, ...

The module never looks at the quantizer's type: every bottleneck honours the contract of
``llvq.quantizers.base`` (``z_q``, ``codes``, ``loss``, ``metrics``). The forward is

    z = g_a(x);  out = quantizer(z);  x̂ = g_s(out.z_q)

with the channel-first ↔ channel-last change done once, here, with einops. Notation:
``B`` batch, ``C`` image channels, ``H, W`` image size, ``D`` latent width, ``h, w`` latent grid.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio

from llvq.checkpoints import load_checkpoint
from llvq.modules._build import build_module, positive_int, positive_number, to_container
from llvq.quantizers.base import QuantizerOutput

__all__ = ["AutoencoderModule", "load_autoencoder"]


def _images(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class AutoencoderModule(L.LightningModule):
    """Encoder → quantizer → decoder, trained on MSE reconstruction + the quantizer's loss.

    Args:
        encoder: ``nn.Module`` or config; images ``(B, C, H, W)`` → latents ``(B, D, h, w)``.
        decoder: ``nn.Module`` or config; latents → images.
        quantizer: ``Quantizer`` or config (``_target_: llvq.quantizers.build``).
        latent_dim: the latent width ``D``; checked against the quantizer's ``dim``.
        in_channels: image channels (recorded; the encoder/decoder configs use it).
        lr: Adam learning rate.
        lr_gamma: if set, ExponentialLR decay per epoch. The LL-VQ-VAE paper's ``gamma=0.0``
            zeroes the learning rate after the first epoch, so it is not the default.
        weight_decay: Adam weight decay.
    """

    def __init__(self, encoder: Any, decoder: Any, quantizer: Any, latent_dim: int | None = None,
                 in_channels: int | None = None, lr: float = 1e-3, lr_gamma: float | None = None,
                 weight_decay: float = 0.0) -> None:
        super().__init__()
        positive_number(lr, "model.lr")
        if latent_dim is not None:
            positive_int(latent_dim, "model.latent_dim")
        if lr_gamma is not None and not 0.0 <= lr_gamma <= 1.0:
            raise ValueError(f"model.lr_gamma must lie in [0, 1] (or null), got {lr_gamma}")
        self.save_hyperparameters({"encoder": to_container(encoder), "decoder": to_container(decoder),
                                   "quantizer": to_container(quantizer), "latent_dim": latent_dim,
                                   "in_channels": in_channels, "lr": lr,
                                   "lr_gamma": lr_gamma, "weight_decay": weight_decay})
        self.encoder = build_module(encoder, "model.encoder")
        self.decoder = build_module(decoder, "model.decoder")
        self.quantizer = build_module(quantizer, "model.quantizer")
        if latent_dim is not None and self.quantizer.dim != latent_dim:
            raise ValueError(f"model.quantizer.dim={self.quantizer.dim} does not match "
                             f"model.latent_dim={latent_dim}; leave the quantizer's dim at "
                             f"${{model.latent_dim}}")
        self.train_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.test_psnr = PeakSignalNoiseRatio(data_range=1.0)

    def forward(self, x: Tensor) -> tuple[Tensor, QuantizerOutput]:
        z = rearrange(self.encoder(x), "b d h w -> b h w d")
        out = self.quantizer(z)
        x_hat = self.decoder(rearrange(out.z_q, "b h w d -> b d h w"))  # (B, C, H, W)
        if x_hat.shape != x.shape:
            raise ValueError(f"decoder output {tuple(x_hat.shape)} does not match the input "
                             f"{tuple(x.shape)}; data.image_size must be divisible by "
                             f"2^len(model.encoder.channels)")
        return x_hat, out

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Integer codes ``(B, h, w)`` or ``(B, h, w, D)`` of images ``(B, C, H, W)``."""
        return self.quantizer.encode(rearrange(self.encoder(x), "b d h w -> b h w d"))

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` from codes as returned by :meth:`encode`."""
        return self.decoder(rearrange(self.quantizer.decode(codes), "b h w d -> b d h w"))

    def _step(self, batch: Any, stage: str) -> Tensor:
        x = _images(batch)
        x_hat, out = self(x)
        recon = F.mse_loss(x_hat, x)
        loss = recon + out.loss
        psnr = getattr(self, f"{stage}_psnr")
        psnr(x_hat.detach().clamp(0, 1), x)
        on_step = stage == "train"
        sync = stage != "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, sync_dist=sync)
        self.log(f"{stage}/recon_mse", recon, on_step=on_step, on_epoch=True, prog_bar=True,
                 sync_dist=sync)
        self.log(f"{stage}/psnr", psnr, on_step=on_step, on_epoch=True)
        for name, value in out.metrics.items():
            self.log(f"{stage}/quantizer/{name}", value.float(), on_step=on_step, on_epoch=True,
                     sync_dist=sync)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr,
                               weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_gamma is None:
            return opt
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=self.hparams.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def load_autoencoder(path: str | Path, map_location: str | torch.device = "cpu") -> AutoencoderModule:
    """Rebuild an :class:`AutoencoderModule` from its checkpoint, in eval mode.

    The checkpoint is read by :func:`llvq.checkpoints.load_checkpoint` (``weights_only=True``,
    plugins loaded, only ``_target_`` s of llvq and of loaded plugins).

    Raises:
        ValueError: the checkpoint is not an autoencoder's (a prior's, a federated run's, ...),
            or see :func:`~llvq.checkpoints.load_checkpoint`.
    """
    ckpt = load_checkpoint(path)
    settings = ckpt["hyper_parameters"]
    known = set(inspect.signature(AutoencoderModule.__init__).parameters) - {"self"}
    if not {"encoder", "decoder", "quantizer"} <= settings.keys() or not settings.keys() <= known:
        raise ValueError(f"{path} is not an autoencoder checkpoint: its model settings are "
                         f"{', '.join(sorted(settings)) or '(none)'} (a prior, federated or other "
                         "job's checkpoint?); pass a checkpoint of a model=autoencoder run, e.g. "
                         "experiment=vqvae or llvqvae")
    model = AutoencoderModule(**settings)
    model.load_state_dict(ckpt["state_dict"])
    return model.to(map_location).eval()

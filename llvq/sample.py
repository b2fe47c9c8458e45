"""Draw images from a trained prior: tokens → codes → the autoencoder's decoder → a PNG grid.

``llvq-sample PRIOR_CKPT --num 16 --out samples.png`` (or ``python -m llvq.sample``). The prior
checkpoint carries the vocabulary (token id → code); the autoencoder checkpoint is the one the
codes were exported from (recorded in the export's manifest) unless ``--autoencoder`` says
otherwise. Both checkpoints are read with ``torch.load(weights_only=True)`` after the outside
plugins are loaded (:mod:`llvq.checkpoints`).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.utils import save_image

from llvq.modules.autoencoder import load_autoencoder
from llvq.modules.prior import load_prior
from llvq.plugins import load_plugins

__all__ = ["grid_size", "load_prior", "main", "sample_images"]

PADDING = 2


@torch.no_grad()
def sample_images(prior: Any, autoencoder: Any, num: int, temperature: float = 1.0,
                  top_k: int | None = None, seed: int = 0, progress: bool = False) -> Tensor:
    """``num`` images ``(num, C, H, W)`` in [0, 1] sampled from ``prior`` and decoded.

    Args:
        prior: a trained :class:`~llvq.modules.PriorModule`.
        autoencoder: the autoencoder whose codes the prior was trained on.
        num: number of images.
        temperature: softmax temperature of the prior.
        top_k: restrict each step to the ``top_k`` most likely tokens.
        seed: seed of the sampling generator.
        progress: show a progress bar over the latent positions.
    """
    gen = torch.Generator(device=prior.vocab.device).manual_seed(seed)
    tokens = prior.sample(num, temperature, top_k, generator=gen, progress=progress)  # (n, h, w)
    codes = prior.tokens_to_codes(tokens)  # (n, h, w) or (n, h, w, D)
    device = next(autoencoder.parameters()).device
    return autoencoder.decode(codes.to(device)).clamp(0.0, 1.0).cpu()  # (n, C, H, W)


def grid_size(num: int, height: int, width: int, nrow: int | None = None) -> tuple[int, int]:
    """``(height, width)`` in pixels of the PNG grid of ``num`` images of ``height × width``."""
    nrow = nrow or math.ceil(math.sqrt(num))
    cols, rows = min(nrow, num), math.ceil(num / nrow)
    return rows * (height + PADDING) + PADDING, cols * (width + PADDING) + PADDING


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llvq-sample",
        description="Sample code grids from a trained prior, decode them through the "
                    "autoencoder and write a PNG grid.",
        epilog="example: llvq-sample logs/prior/runs/<time>/checkpoints/last.ckpt --num 16 "
               "--out samples.png")
    parser.add_argument("prior", type=Path, help="prior .ckpt written by train.py experiment=prior")
    parser.add_argument("--autoencoder", type=Path, default=None,
                        help="autoencoder .ckpt (default: the checkpoint recorded in the export "
                             "manifest the prior was trained on)")
    parser.add_argument("--num", type=int, default=16, help="number of samples (default: 16)")
    parser.add_argument("--out", type=Path, default=Path("samples.png"),
                        help="PNG file to write (default: samples.png)")
    parser.add_argument("--nrow", type=int, default=None,
                        help="images per grid row (default: ceil(sqrt(num)))")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature")
    parser.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def run_cli(argv: list[str] | None = None) -> Path:
    """Entry point of ``llvq-sample``; returns the PNG path."""
    args = build_parser().parse_args(argv)
    load_plugins()  # before the checkpoints: the autoencoder's quantizer may be a plugin's
    if args.num < 1:
        raise SystemExit("llvq-sample: --num must be >= 1")
    prior = load_prior(args.prior, args.device)
    ae_path = args.autoencoder or prior.hparams.manifest.get("checkpoint")
    if ae_path is None:
        raise SystemExit("llvq-sample: the prior's export names no autoencoder checkpoint; "
                         "pass --autoencoder <ckpt>")
    autoencoder = load_autoencoder(ae_path, args.device)
    images = sample_images(prior, autoencoder, args.num, args.temperature, args.top_k,
                           args.seed, progress=not args.no_progress)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    nrow = args.nrow or math.ceil(math.sqrt(args.num))
    save_image(images, args.out, nrow=nrow, padding=PADDING)
    h, w = grid_size(args.num, images.shape[-2], images.shape[-1], nrow)
    print(f"wrote {args.num} samples ({w}x{h} PNG) to {args.out}", file=sys.stderr)
    return args.out


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (returns None so the exit status is 0)."""
    run_cli(argv)


if __name__ == "__main__":
    main()

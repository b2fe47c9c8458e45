"""An autoregressive prior over exported codes: a small causal transformer on code tokens.

A VQ-VAE is half a generative model (van den Oord et al., 2017, section 3.2): a prior
``p(t) = Π_i p(t_i | t_<i)`` over the latent grid's tokens, read in raster order, completes it.
Tokens are vocabulary ids from ``llvq-export`` (codebook indices for VQ, ids of the lattice
points used for a lattice). The sequence is ``[BOS, t_0, ..., t_{L−2}]`` → logits for
``t_0 ... t_{L−1}``; the loss is the cross-entropy in nats, logged also as bits per latent
vector (``/ ln 2``). Sampling draws tokens one at a time and maps them back to codes with the
vocabulary, which the checkpoint carries, so samples decode through the autoencoder.

Notation: ``B`` batch, ``L = h·w`` sequence length, ``V`` vocabulary size, ``E`` width.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llvq.checkpoints import load_checkpoint
from llvq.codes_format import load_export
from llvq.modules._build import positive_number
from llvq.progress import track

__all__ = ["PriorModule", "load_prior"]


class PriorModule(L.LightningModule):
    """Causal transformer prior over the token grid of an export.

    Args:
        export_dir: an ``llvq-export`` directory; its manifest and vocabulary are read once and
            stored in the checkpoint (so a trained prior no longer needs the directory).
        manifest: the export's manifest (set when reloading from a checkpoint).
        d_model: transformer width ``E``.
        num_layers: transformer layers.
        num_heads: attention heads.
        dim_feedforward: MLP width (default ``4·E``).
        dropout: dropout in the transformer layers.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
    """

    def __init__(self, export_dir: str | None = None, manifest: dict[str, Any] | None = None,
                 d_model: int = 128, num_layers: int = 2, num_heads: int = 4,
                 dim_feedforward: int | None = None, dropout: float = 0.1, lr: float = 3e-4,
                 weight_decay: float = 0.01) -> None:
        super().__init__()
        positive_number(lr, "model.lr")
        if d_model % num_heads:
            raise ValueError(f"model.d_model={d_model} must be divisible by "
                             f"model.num_heads={num_heads}")
        vocab = None
        if manifest is None:
            if export_dir is None:
                raise ValueError("model.export_dir is not set; point it (or data.path) at an "
                                 "llvq-export directory")
            export = load_export(export_dir)
            manifest, vocab = export.manifest, export.vocab
        self.save_hyperparameters({"export_dir": str(export_dir) if export_dir else None,
                                   "manifest": manifest, "d_model": d_model,
                                   "num_layers": num_layers, "num_heads": num_heads,
                                   "dim_feedforward": dim_feedforward, "dropout": dropout,
                                   "lr": lr, "weight_decay": weight_decay})
        self.grid = tuple(manifest["grid"])  # (h, w)
        self.seq_len = math.prod(self.grid)  # L
        self.vocab_size = int(manifest["vocabulary"]["size"])  # V
        self.bos = self.vocab_size  # the extra input-only token
        code_dim = manifest["code_dim"]
        if vocab is None:  # filled by load_state_dict
            shape = (self.vocab_size,) if code_dim is None else (self.vocab_size, code_dim)
            vocab = torch.zeros(shape, dtype=torch.int64)
        self.register_buffer("vocab", vocab.to(torch.int64))  # (V,) or (V, D): token -> code

        self.tok_emb = nn.Embedding(self.vocab_size + 1, d_model)
        self.pos_emb = nn.Parameter(torch.zeros(self.seq_len, d_model))
        nn.init.normal_(self.pos_emb, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward or 4 * d_model,
                                           dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, self.vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        """Next-token logits ``(B, T, V)`` for input tokens ``(B, T)`` (BOS first), ``T ≤ L``."""
        t = tokens.shape[1]
        h = self.tok_emb(tokens) + self.pos_emb[:t]  # (B, T, E)
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=tokens.device)
        h = self.transformer(h, mask=mask, is_causal=True)  # (B, T, E)
        return self.head(self.norm(h))  # (B, T, V)

    def _inputs(self, tokens: Tensor) -> Tensor:
        bos = tokens.new_full((tokens.shape[0], 1), self.bos)
        return torch.cat([bos, tokens[:, :-1]], dim=1)  # (B, L)

    def nll(self, tokens: Tensor) -> Tensor:
        """Mean negative log-likelihood in nats per latent vector of sequences ``(B, L)``."""
        logits = self(self._inputs(tokens))  # (B, L, V)
        return F.cross_entropy(logits.reshape(-1, self.vocab_size), tokens.reshape(-1))

    def _step(self, batch: Any, stage: str) -> Tensor:
        tokens = batch[0] if isinstance(batch, (tuple, list)) else batch  # (B, L)
        loss = self.nll(tokens)
        train = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=train, on_epoch=True, sync_dist=not train)
        self.log(f"{stage}/bits_per_latent", loss / math.log(2.0), on_step=train, on_epoch=True,
                 prog_bar=True, sync_dist=not train)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr,
                                 weight_decay=self.hparams.weight_decay)

    @torch.no_grad()
    def sample(self, num: int, temperature: float = 1.0, top_k: int | None = None,
               generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
        """Draw ``num`` token grids ``(num, h, w)`` autoregressively.

        Args:
            num: number of samples.
            temperature: softmax temperature (> 0).
            top_k: keep only the ``top_k`` most likely tokens at each step.
            generator: random generator (on the module's device) for reproducible samples.
            progress: show a progress bar over the ``L`` positions.
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")

        was_training = self.training
        self.eval()
        seq = torch.full((num, 1), self.bos, dtype=torch.int64, device=self.vocab.device)
        for _ in track(range(self.seq_len), description="sampling", disable=not progress):
            logits = self(seq)[:, -1] / temperature  # (num, V)
            if top_k is not None and top_k < self.vocab_size:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)  # (num, 1)
            seq = torch.cat([seq, nxt], dim=1)
        self.train(was_training)
        return seq[:, 1:].reshape(num, *self.grid)

    def tokens_to_codes(self, tokens: Tensor) -> Tensor:
        """Codes ``(..., h, w)`` or ``(..., h, w, D)`` of token grids, through the vocabulary."""
        return self.vocab[tokens]


def load_prior(path: str | Path, map_location: str | torch.device = "cpu") -> PriorModule:
    """Rebuild a :class:`PriorModule` from its checkpoint, in eval mode.

    Read by :func:`llvq.checkpoints.load_checkpoint` (``weights_only=True``, trusted targets).
    """
    ckpt = load_checkpoint(path)
    hparams = dict(ckpt["hyper_parameters"])
    if "manifest" not in hparams:
        raise ValueError(f"{path} is not a prior checkpoint (train one with experiment=prior)")
    model = PriorModule(**hparams)
    model.load_state_dict(ckpt["state_dict"])
    return model.to(map_location).eval()

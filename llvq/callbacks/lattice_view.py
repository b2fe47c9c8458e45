"""A picture of the learned lattice against the latent data, logged to TensorBoard.

For any lattice bottleneck (``vector_codes``: codes are integer vectors ``u``) the basis is read
through the codes contract alone: basis vector ``k`` is ``decode(e_k) − decode(0)`` (subtractive
dither and an affine decoder's offset cancel in the difference), a ``(k, D)`` matrix ``B`` —
``k`` the code width, ``D`` for most lattices — whose rows span the lattice in latent space:
``diag B`` for LL-VQ-VAE's diagonal lattice (eq. 5), ``s·G`` per block for a product lattice,
``k`` rows in ``D`` dimensions for a lattice on a projection (``projected``).

The figure has ``num_pairs`` panels of 2-D projections onto pairs of latent axes, those along
which the lattice points in use vary most first: the latents of the first validation batch (grey), the lattice points they quantize to (red) and,
where ``B`` is diagonal, the lattice's grid lines. A last panel shows the basis vector lengths
``‖b_k‖`` over the validation epochs (the diagonal basis over time); that history is kept in the
checkpoint. Drawn on rank zero; skipped (with an info log) for finite codebooks and ``identity``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from einops import rearrange
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from llvq.callbacks._common import batch_images, log, quantizer_of, tensorboard
from llvq.quantizers.base import Quantizer

__all__ = ["LatticeView", "lattice_basis"]


@torch.no_grad()
def lattice_basis(quantizer: Quantizer) -> Tensor:
    """Rows ``b_k = decode(e_k) − decode(0)``: the ``(k, D)`` basis of a lattice quantizer
    whose codes are ``k``-vectors (``k = D`` unless the lattice sits on a projection)."""
    width = quantizer.code_shape(())[-1]
    device = next((t.device for t in quantizer.state_dict().values()), torch.device("cpu"))
    eye = torch.eye(width, dtype=torch.int64, device=device)  # (k, k)
    return (quantizer.decode(eye) - quantizer.decode(torch.zeros_like(eye))).double().cpu()


def _is_lattice(q: Quantizer | None) -> bool:
    return q is not None and q.integer_codes and q.vector_codes


class LatticeView(Callback):
    """2-D projections of the lattice and the latents, and the basis lengths over time.

    Args:
        num_pairs: projection panels, each onto two latent axes (most varied lattice points first).
        max_points: latent vectors drawn per panel (a fixed subsample of the first batch).
        every_n_epochs: draw every this many validation epochs (the basis is recorded each one).
        tag: TensorBoard figure tag.
    """

    def __init__(self, num_pairs: int = 4, max_points: int = 2000, every_n_epochs: int = 1,
                 tag: str = "val/lattice") -> None:
        if num_pairs < 1 or max_points < 1 or every_n_epochs < 1:
            raise ValueError("callbacks.lattice_view: num_pairs, max_points and every_n_epochs "
                             "must be >= 1")
        self.num_pairs, self.max_points = num_pairs, max_points
        self.every_n_epochs, self.tag = every_n_epochs, tag
        self.basis_history: list[Tensor] = []  # ‖b_k‖ per validation epoch, each (k,)
        self.epochs: list[int] = []
        self._points: tuple[Tensor, Tensor] | None = None
        self._skipped = False

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or batch_idx != 0 or dataloader_idx != 0:
            return
        q = quantizer_of(pl_module)
        encoder = getattr(pl_module, "encoder", None)
        if not _is_lattice(q) or encoder is None:
            if not self._skipped:
                self._skipped = True
                log.info("LatticeView: %s has no lattice bottleneck; skipped",
                         type(pl_module).__name__)
            return
        if not trainer.is_global_zero or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        with torch.no_grad():
            z = rearrange(encoder(batch_images(batch)), "b d h w -> (b h w) d")  # (N, D)
            z = z[torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(0))
                  [: self.max_points].to(z.device)]
            zq = q.decode(q.encode(z))  # (N, D) the lattice points the latents quantize to
        self._points = (z.float().cpu(), zq.float().cpu())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        q = quantizer_of(pl_module)
        if trainer.sanity_checking or not _is_lattice(q):
            return
        basis = lattice_basis(q)  # (k, D)
        self.basis_history.append(basis.norm(dim=1).float())  # (k,)
        self.epochs.append(trainer.current_epoch)
        self._draw(trainer, basis)

    @rank_zero_only
    def _draw(self, trainer: L.Trainer, basis: Tensor) -> None:
        writer = tensorboard(trainer)
        if self._points is None or writer is None:
            self._points = None
            return
        writer.add_figure(self.tag, self.figure(*self._points, basis),
                          global_step=trainer.global_step, close=True)
        self._points = None

    def figure(self, z: Tensor, zq: Tensor, basis: Tensor) -> Any:
        """The matplotlib figure: projections of ``z (N, D)``, ``zq (N, D)`` and the basis history."""
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

        z, zq, basis = z.detach().cpu(), zq.detach().cpu(), basis.detach().cpu().double()
        dim = z.shape[1]
        # most informative axes first: where the lattice points used vary most (then the latents)
        order = torch.argsort(zq.double().var(0) + 1e-6 * z.double().var(0), descending=True)
        order = order.tolist() if dim > 1 else [0, 0]
        pairs = [(order[2 * k], order[2 * k + 1]) for k in range(min(self.num_pairs, max(dim // 2, 1)))]
        fig = Figure(figsize=(3.2 * (len(pairs) + 1), 3.2))
        axes = fig.subplots(1, len(pairs) + 1)
        diagonal = basis.shape[0] == basis.shape[1] and \
            bool((basis - torch.diag(torch.diagonal(basis))).abs().max() < 1e-9)
        for ax, (i, j) in zip(axes, pairs):
            ax.scatter(z[:, i], z[:, j], s=3, c="0.6", alpha=0.5, linewidths=0, label="latents")
            ax.scatter(zq[:, i], zq[:, j], s=12, c="tab:red", marker="x", linewidths=0.8,
                       label="lattice points used")
            if diagonal:
                for axis, line in ((i, ax.axvline), (j, ax.axhline)):
                    lo, hi = float(z[:, axis].min()), float(z[:, axis].max())
                    step = float(basis[axis, axis])
                    ks = torch.arange(int(lo // step) - 1, int(hi // step) + 2)
                    for k in ks[:200].tolist():
                        line(k * step, c="tab:blue", lw=0.3, alpha=0.5)
            for axis, setlim in ((i, ax.set_xlim), (j, ax.set_ylim)):
                both = torch.cat([z[:, axis], zq[:, axis]])
                lo, hi = float(both.min()), float(both.max())
                pad = 0.1 * (hi - lo) + 1e-3
                setlim(lo - pad, hi + pad)
            ax.set_title(f"axes ({i}, {j})", fontsize=9)
            ax.tick_params(labelsize=7)
        axes[0].legend(fontsize=7, loc="upper left")
        ax = axes[-1]
        if self.basis_history:
            hist = torch.stack(self.basis_history)  # (E, k)
            ax.plot(self.epochs, hist.numpy(), lw=0.6, alpha=0.7, marker=".", ms=2)
        ax.set_title("basis lengths ‖b_k‖ by epoch", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        fig.tight_layout()
        return fig

    def state_dict(self) -> dict[str, Any]:
        return {"basis_history": [b.clone() for b in self.basis_history],
                "epochs": list(self.epochs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.basis_history = [b.clone() for b in state_dict.get("basis_history", [])]
        self.epochs = list(state_dict.get("epochs", []))

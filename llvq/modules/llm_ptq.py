"""GLVQ post-training quantization of a causal LM as a LightningModule (``model=llm_ptq``).

One training step quantizes one decoder block (:class:`llvq.llm.ptq.BlockwisePTQ`), so the
trainer's progress bar runs over blocks, its loggers get per-layer scalars
(``layers/<name>/{bits,error,mu,cond}``), a checkpoint after every block lets an interrupted
run resume where it stopped (the checkpoint holds the quantized blocks' codes and side
information, not the model), and under DDP the calibration windows and the groups of each
layer are shared out across ranks. After the last block: perplexity of the quantized model,
next to the full-precision model and group-wise RTN at the same code bits, and the export
(:func:`llvq.llm.io.save_quantized`).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor, nn

from llvq.llm.eval import perplexity
from llvq.llm.glvq import GLVQSettings, LayerResult, dequantize, rtn_quantize
from llvq.llm.models import load_causal_lm, quantizable_linears
from llvq.llm.ptq import BlockwisePTQ, dist_rank_world, layer_storage_bits

log = logging.getLogger(__name__)
# the module's "optimizer" never changes anything, so Lightning's note about checkpointing
# the pre-optimization state of a manual-optimization run does not apply
warnings.filterwarnings("ignore", message=".*no pre-optimization state was saved.*")

__all__ = ["LLMPTQModule"]


def _result_to_state(res: LayerResult) -> dict[str, Any]:
    return {"codes": res.codes.clone(), "generator": res.generator.clone(), "mu": res.mu.clone(),
            "scale": res.scale.clone(),
            "row_scale": None if res.row_scale is None else res.row_scale.clone(),
            "bits": res.bits.clone(), "error": res.error, "error_init": res.error_init,
            "outer_steps": res.outer_steps, "compand": res.compand,
            "out_features": res.weight.shape[0]}


def _state_to_result(s: dict[str, Any], group_size: int) -> LayerResult:
    w = dequantize(s["codes"], s["generator"], s["mu"], s["scale"], s["row_scale"], s["bits"],
                   s["compand"], s["out_features"], group_size)
    return LayerResult(codes=s["codes"], generator=s["generator"], mu=s["mu"], scale=s["scale"],
                       row_scale=s["row_scale"], bits=s["bits"], weight=w, error=s["error"],
                       error_init=s["error_init"], outer_steps=s["outer_steps"],
                       compand=s["compand"])


class LLMPTQModule(L.LightningModule):
    """Quantize a causal LM's linear layers with GLVQ, one block per training step.

    Args:
        lm: ``{name, gguf_file, dtype}``: ``tiny-llama``, ``smollm2`` or a Hugging Face id/path.
        text: a :class:`llvq.data.text.TextDataModule` (calibration and evaluation text).
        bits: target bits per weight including side information (>= 1; e.g. 2, 3, 1.5).
        group_size: input columns per group (must divide every layer's input width).
        lattice_dim: lattice dimension ``d`` (8; 16 and 32 allowed).
        compand: per-group µ-law companding (the ablation turns it off).
        salience: salience-driven bit allocation (off: equal widths).
        row_scale: per-output-row float16 scale before grouping.
        error_feedback: groups left to right, each group's error folded into the later columns
            (see :class:`llvq.llm.glvq.GLVQSettings`); ``damp`` regularises ``H`` for it.
        max_outer, inner_steps, lr, reg, tol: the alternating optimisation (see GLVQSettings).
        calib_batch_size: calibration windows per forward pass.
        eval_fp, eval_rtn: also report the full-precision and RTN perplexities.
        eval_batch_size: windows per forward pass when evaluating.
        export_dir: where the quantized model is written (``None``: ``<output_dir>/quantized``).
        seed: seeds the tiny model and the calibration windows.
    """

    def __init__(self, lm: dict | None = None, text: Any = None, bits: float = 2.0,
                 group_size: int = 128, lattice_dim: int = 8, compand: bool = True,
                 salience: bool = True, row_scale: bool = True, error_feedback: bool = True,
                 damp: float = 0.01, max_outer: int = 6,
                 inner_steps: int = 5, lr: float = 0.01, reg: float = 1e-3, tol: float = 1e-3,
                 calib_batch_size: int = 4, eval_fp: bool = True, eval_rtn: bool = True,
                 eval_batch_size: int = 4, export_dir: str | None = None, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(bits, int | float) or isinstance(bits, bool) or not bits >= 1:
            raise ValueError(f"model.bits must be a number >= 1 (bits per weight), got {bits!r}")
        if lattice_dim not in (2, 4, 8, 16, 32):
            raise ValueError(f"model.lattice_dim must be one of 2, 4, 8, 16, 32, got {lattice_dim}")
        if lm is not None and not isinstance(lm, dict):  # a Hydra DictConfig
            from omegaconf import OmegaConf
            lm = OmegaConf.to_container(lm, resolve=True)  # plain, so checkpoints load safely
        self.save_hyperparameters(ignore=["text"])
        self.automatic_optimization = False
        self.lm_spec = {"name": "tiny-llama", "gguf_file": None, "dtype": "float32", **(lm or {})}
        if text is None:
            from llvq.data.text import TextDataModule
            text = TextDataModule()
        self.text = text
        self.settings = GLVQSettings(group_size=group_size, lattice_dim=lattice_dim,
                                     compand=compand, row_scale=row_scale,
                                     error_feedback=error_feedback, damp=damp, max_outer=max_outer,
                                     inner_steps=inner_steps, lr=lr, reg=reg, tol=tol)
        self.anchor = nn.Parameter(torch.zeros(1))  # DDP needs one parameter; never changes
        self._lm: list[nn.Module] = []  # a list: the LM is not a submodule (not in checkpoints)
        self.tokenizer: Any = None
        self.ptq: BlockwisePTQ | None = None
        self.done: list[int] = []
        self._restored: dict[str, Any] | None = None
        self._eval_tokens: Tensor | None = None
        self.fp_metrics: dict[str, float] = {}
        self.final: dict[str, float] = {}
        self._t0 = time.time()

    # -- set-up --------------------------------------------------------------------------------
    @property
    def lm(self) -> nn.Module:
        if not self._lm:
            self._load()
        return self._lm[0]

    def _load(self) -> None:
        spec = self.lm_spec
        model, tok = load_causal_lm(spec["name"], spec.get("gguf_file"), spec.get("dtype", "float32"),
                                    seed=self.hparams.seed)
        quantizable_linears(model, spec["name"])  # one clear error for a model with none
        self._lm = [model]
        self.tokenizer = tok

    def setup(self, stage: str) -> None:
        model = self.lm
        calib = self.text.calibration_tokens(self.tokenizer)
        self.ptq = BlockwisePTQ(model, calib, self.hparams.bits, self.settings,
                                salience=self.hparams.salience,
                                batch_size=self.hparams.calib_batch_size, name=self.lm_spec["name"])
        self._fp_weights = ({k: m.weight.detach().clone() for k, m in
                             quantizable_linears(model).items()} if self.hparams.eval_rtn else {})

    def train_dataloader(self) -> list[int]:
        """Block indices; the module draws its own calibration batches."""
        return list(range(len(self.ptq.blocks)))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.anchor], lr=0.0)

    def on_train_start(self) -> None:
        ptq = self.ptq
        if self.hparams.eval_fp and not self.fp_metrics and not self.trainer.fast_dev_run:
            self.fp_metrics = self._perplexity("fp")
        ptq.capture_inputs()
        if self._restored:
            group_size = self.settings.group_size
            ptq.results = {k: _state_to_result(v, group_size)
                           for k, v in self._restored["results"].items()}
            ptq.carry = float(self._restored["carry"])
            self.done = list(self._restored["done"])
            for i in self.done:  # rebuild the quantized blocks and their outputs
                ptq.apply_result(i)
            log.info("resumed: %d of %d blocks already quantized", len(self.done), len(ptq.blocks))
            self._restored = None

    # -- one block per step -----------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> None:
        # The next block not yet quantized. Not the batch's value: after a resume mid-epoch,
        # Lightning restarts a plain loader from its first item but keeps counting batches, so
        # the number of steps left equals the number of blocks left, not their indices.
        todo = [j for j in range(len(self.ptq.blocks)) if j not in self.done]
        if not todo:
            return
        i = todo[0]
        opt = self.optimizers()
        t = time.time()
        bits_sum = numel = 0.0
        for name, res, bpw in self.ptq.quantize_block(i):
            n = res.weight.numel()
            bits_sum += bpw * n
            numel += n
            g = res.generator.float()
            cond = float(torch.linalg.cond(g).mean())
            for key, value in (("bits", bpw), ("error", res.error), ("error_init", res.error_init),
                               ("mu", float(res.mu.float()[res.compand].mean()) if res.compand.any() else 0.0),
                               ("compand_share", float(res.compand.float().mean())),
                               ("cond", cond)):
                self.log(f"layers/{name}/{key}", value, on_step=True, batch_size=1)
        self.done.append(i)
        opt.zero_grad()
        self.anchor.grad = torch.zeros_like(self.anchor)
        opt.step()  # lr 0: only advances global_step, so checkpoints count blocks
        self.log("ptq/block", float(i), on_step=True, prog_bar=True, batch_size=1)
        self.log("ptq/block_bits", bits_sum / max(numel, 1), on_step=True, prog_bar=True,
                 batch_size=1)
        self.log("ptq/seconds_per_block", time.time() - t, on_step=True, batch_size=1)
        if len(self.done) == len(self.ptq.blocks):
            self._finish()

    # -- the end --------------------------------------------------------------------------------
    def effective_bits(self) -> float:
        """Bits per quantized weight including side information, over the whole model."""
        used = sum(layer_storage_bits(r) for r in self.ptq.results.values())
        numel = sum(r.weight.numel() for r in self.ptq.results.values())
        return used / max(numel, 1)

    def _perplexity(self, label: str) -> dict[str, float]:
        if self._eval_tokens is None:  # tokenized once for the fp, GLVQ and RTN evaluations
            self._eval_tokens = self.text.evaluation_tokens(self.tokenizer)
        tokens = self._eval_tokens
        seq = self.text.seq_len
        rank, world = dist_rank_world()
        windows = tokens[: (tokens.numel() // seq) * seq].view(-1, seq)
        mine = windows[rank::world].reshape(-1)
        if mine.numel() < seq:
            mine = windows[:1].reshape(-1)  # more ranks than windows: score one, weight it 0
            weight = 0.0
        else:
            weight = 1.0
        r = perplexity(self.lm, mine, seq_len=seq, batch_size=self.hparams.eval_batch_size,
                       progress=rank == 0)
        v = torch.tensor([r["nll"] * r["tokens"] * weight, r["tokens"] * weight],
                         dtype=torch.float64)
        if world > 1:
            dist.all_reduce(v)
        nll = float(v[0] / v[1])
        out = {"ppl": math.exp(nll), "nll": nll, "tokens": float(v[1]), "seq_len": float(seq)}
        log.info("%s perplexity %.3f on %d tokens (windows of %d, stride %d)", label, out["ppl"],
                 int(out["tokens"]), seq, seq)
        return out

    def _finish(self) -> None:
        hp = self.hparams
        self.final = {"final/ppl": self._perplexity("GLVQ")["ppl"],
                      "final/bits": self.effective_bits(),
                      "final/minutes": (time.time() - self._t0) / 60.0}
        if self.fp_metrics:
            self.final["final/ppl_fp"] = self.fp_metrics["ppl"]
        if hp.eval_rtn and float(hp.bits).is_integer():
            self.final.update(self._rtn_metrics(int(hp.bits)))
        for k, v in self.final.items():
            self.log(k, v, on_step=True, batch_size=1)
        if self.trainer.is_global_zero and not self.trainer.fast_dev_run:
            self.export()

    def _rtn_metrics(self, bits: int) -> dict[str, float]:
        """Perplexity of group-wise RTN at ``bits`` code bits (the GLVQ weights are put back)."""
        linears = quantizable_linears(self.lm)
        glvq = {k: m.weight.detach().clone() for k, m in linears.items()}
        rtn_bits = 0.0
        with torch.no_grad():
            for k, m in linears.items():
                w_hat, rtn_bits = rtn_quantize(self._fp_weights[k], bits, self.settings.group_size)
                m.weight.copy_(w_hat.to(m.weight))
        ppl = self._perplexity(f"RTN {bits}-bit")["ppl"]
        with torch.no_grad():
            for k, m in linears.items():
                m.weight.copy_(glvq[k])
        return {"final/ppl_rtn": ppl, "final/bits_rtn": rtn_bits}

    def export(self, directory: str | Path | None = None) -> Path:
        """Write the quantized model (see :mod:`llvq.llm.io`); returns the directory."""
        from llvq.llm.io import save_quantized

        d = Path(directory or self.hparams.export_dir
                 or Path(self.trainer.default_root_dir) / "quantized")
        info = {"source": self.lm_spec, "settings": {k: v for k, v in self.hparams.items()
                                                     if k not in ("lm", "export_dir")},
                "metrics": self.final}
        manifest = save_quantized(d, self.lm, self.ptq.results, self.tokenizer,
                                  self.settings.group_size, info)
        size = manifest["size"]
        log.info("exported to %s: %.2f MB of quantized weights (%.1fx smaller than fp16, %.3f "
                 "bits/weight in the file)", d, size["quantized_bytes"] / 1e6,
                 size["compression_vs_fp16"], size["bits_per_weight_file"])
        return d

    # -- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ptq is None:
            return
        checkpoint["glvq"] = {"done": list(self.done), "carry": self.ptq.carry,
                              "results": {k: _result_to_state(v)
                                          for k, v in self.ptq.results.items()},
                              "fp_metrics": self.fp_metrics}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("glvq")
        if state is not None:
            self._restored = state
            self.fp_metrics = dict(state.get("fp_metrics", {}))

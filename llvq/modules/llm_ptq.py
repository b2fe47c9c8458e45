"""GLVQ post-training quantization of a causal LM as a step job (``model=llm_ptq``).

One unit of work (:class:`llvq.modules.step_job.StepJob`) quantizes one decoder block
(:class:`llvq.llm.ptq.BlockwisePTQ`), so the trainer's progress bar runs over blocks, its
loggers get per-layer scalars (``layers/<name>/{bits,error,mu,cond}``), a checkpoint after
every block lets an interrupted run resume where it stopped (the checkpoint holds the quantized
blocks' codes and side information, not the model), and under DDP the calibration windows and
the layers or groups of each block are shared out across ranks. After the last block:
perplexity of the quantized model, next to the full-precision model and the baselines of
``model.eval.baselines`` (:data:`llvq.llm.baselines.LLM_BASELINES`) at the same code bits, and
the export (:func:`llvq.llm.io.save_quantized`). The settings are one nested
:class:`llvq.llm.settings.PTQConfig`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from llvq.data.text import TextDataModule
from llvq.llm.baselines import LLM_BASELINES, apply_baseline
from llvq.llm.eval import perplexity
from llvq.llm.groups import LayerResult, dequantize
from llvq.llm.io import save_quantized
from llvq.llm.models import load_causal_lm, quantizable_linears
from llvq.llm.ptq import BlockwisePTQ, dist_rank_world, layer_storage_bits, quantize_with_baseline
from llvq.llm.settings import EvalSettings, GLVQSettings, LMSpec, PTQConfig, TuneSettings
from llvq.llm.tune import scale_tuning, tune_float_parameters
from llvq.modules.step_job import StepJob

log = logging.getLogger(__name__)

__all__ = ["LLMPTQModule"]


def _result_to_state(res: LayerResult) -> dict[str, Any]:
    return {"codes": res.codes.clone(), "generator": res.generator.clone(), "mu": res.mu.clone(),
            "scale": res.scale.clone(),
            "row_scale": None if res.row_scale is None else res.row_scale.clone(),
            "bits": res.bits.clone(), "error": res.error, "error_init": res.error_init,
            "outer_steps": res.outer_steps, "compand": res.compand,
            "out_features": res.weight.shape[0], "rotation_seed": res.rotation_seed,
            "code": res.code}


def _state_to_result(s: dict[str, Any], group_size: int) -> LayerResult:
    w = dequantize(s["codes"], s["generator"], s["mu"], s["scale"], s["row_scale"], s["bits"],
                   s["compand"], s["out_features"], group_size, s.get("code", "box"))
    return LayerResult(codes=s["codes"], generator=s["generator"], mu=s["mu"], scale=s["scale"],
                       row_scale=s["row_scale"], bits=s["bits"], weight=w, error=s["error"],
                       error_init=s["error_init"], outer_steps=s["outer_steps"],
                       compand=s["compand"], rotation_seed=s.get("rotation_seed"),
                       code=s.get("code", "box"))


class LLMPTQModule(StepJob):
    """Quantize a causal LM's linear layers with GLVQ, one decoder block per unit.

    The keyword arguments are the fields of :class:`llvq.llm.settings.PTQConfig` (the
    ``model.*`` keys of ``configs/model/llm_ptq.yaml``); the nested ones take a dataclass, a
    mapping or a Hydra node. Pass ``config=`` instead to give a whole ``PTQConfig``.

    Args:
        lm: the model (:class:`~llvq.llm.settings.LMSpec`): ``{name, gguf_file, dtype}``.
        text: a :class:`llvq.data.text.TextDataModule` (calibration and evaluation text; not a
            hyper-parameter, default ``TextDataModule()``).
        bits: target bits per weight including side information (>= 1; e.g. 2, 3, 1.5).
        salience: salience-driven bit allocation (off: equal widths).
        glvq: the per-layer optimisation (:class:`~llvq.llm.settings.GLVQSettings`).
        calib_batch_size: calibration windows per forward pass.
        calib_offload: keep the calibration hidden states in files under this directory
            instead of memory (``None``: memory).
        eval: the final evaluation (:class:`~llvq.llm.settings.EvalSettings`).
        tune: tuning of the float parameters left after the last block
            (:class:`~llvq.llm.settings.TuneSettings`; ``steps=0``: off).
        export_dir: where the quantized model is written (``None``: ``<output_dir>/quantized``).
        seed: seeds the tiny model.
        config: a ready :class:`~llvq.llm.settings.PTQConfig` (then no other setting is given).

    Raises:
        ValueError: naming the setting (``model.glvq.lattice_dim``) for a bad value or key.
    """

    def __init__(self, lm: LMSpec | dict | None = None, text: Any = None, bits: float = 2.0,
                 salience: bool = True, glvq: GLVQSettings | dict | None = None,
                 calib_batch_size: int = 4, eval: EvalSettings | dict | None = None,
                 tune: TuneSettings | dict | None = None, export_dir: str | None = None,
                 seed: int = 0, config: PTQConfig | None = None,
                 calib_offload: str | None = None) -> None:
        super().__init__()
        if config is None:
            config = PTQConfig(lm=lm, bits=bits, salience=salience, glvq=glvq,
                               calib_batch_size=calib_batch_size, calib_offload=calib_offload,
                               eval=eval, tune=tune, export_dir=export_dir, seed=seed)
        elif not isinstance(config, PTQConfig):
            raise TypeError(f"config must be a PTQConfig, got {type(config).__name__}")
        self.config = config
        self.save_hyperparameters(config.to_dict())  # plain: the checkpoint rebuilds the module
        if text is None:
            text = TextDataModule()
        self.text = text
        self.settings = config.glvq
        self._lm: list[nn.Module] = []  # a list: the LM is not a submodule (not in checkpoints)
        self.tokenizer: Any = None
        self.ptq: BlockwisePTQ | None = None
        self.done: list[int] = []
        self._restored: dict[str, Any] | None = None
        self._eval_tokens: Tensor | None = None
        self._fp_weights: dict[str, Tensor] = {}
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
        spec = self.config.lm
        model, tok = load_causal_lm(spec.name, spec.gguf_file, spec.dtype, seed=self.config.seed)
        quantizable_linears(model, spec.name)  # one clear error for a model with none
        self._lm = [model]
        self.tokenizer = tok

    def setup(self, stage: str) -> None:
        super().setup(stage)
        cfg = self.config
        model = self.lm
        calib = self.text.calibration_tokens(self.tokenizer)
        self.ptq = BlockwisePTQ(model, calib, cfg.bits, cfg.glvq, salience=cfg.salience,
                                batch_size=cfg.calib_batch_size, name=cfg.lm.name,
                                offload=cfg.calib_offload)
        self._fp_weights = ({k: m.weight.detach().clone() for k, m in
                             quantizable_linears(model).items()} if cfg.eval.baselines else {})

    def units_per_epoch(self) -> int:
        """One unit per decoder block."""
        return len(self.ptq.blocks)

    def on_train_start(self) -> None:
        ptq = self.ptq
        if self.config.eval.fp and not self.fp_metrics and not self.trainer.fast_dev_run:
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

    # -- one block per unit -------------------------------------------------------------------
    def run_unit(self, index: int) -> None:
        """Quantize the next block not yet done (``index`` only counts the units).

        Not the block ``index``: after a resume mid-epoch, Lightning restarts a plain loader
        from its first item but keeps counting batches, so the number of units left equals the
        number of blocks left, not their indices.
        """
        todo = [j for j in range(len(self.ptq.blocks)) if j not in self.done]
        if not todo:
            return
        i = todo[0]
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
        r = perplexity(self.lm, mine, seq_len=seq, batch_size=self.config.eval.batch_size,
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
        cfg = self.config
        self.final = {"final/ppl": self._perplexity("GLVQ")["ppl"],
                      "final/bits": self.effective_bits(),
                      "final/minutes": (time.time() - self._t0) / 60.0}
        if self.fp_metrics:
            self.final["final/ppl_fp"] = self.fp_metrics["ppl"]
        if cfg.eval.baselines and cfg.bits.is_integer():
            self.final.update(self._baseline_metrics(int(cfg.bits)))
        if cfg.tune.steps > 0:
            self._tune()
        for k, v in self.final.items():
            self.log(k, v, on_step=True, batch_size=1)
        if self.trainer.is_global_zero and not self.trainer.fast_dev_run:
            self.export()

    def _tune(self) -> None:
        """Tune the float parameters left (``model.tune``) against a fresh full-precision copy;
        ``final/ppl`` becomes the tuned model's, ``final/ppl_untuned`` keeps the one before."""
        spec, tune = self.config.lm, self.config.tune
        if self.trainer.fast_dev_run:  # one step: the path runs, quickly
            tune = dataclasses.replace(tune, steps=1)
        teacher, _ = load_causal_lm(spec.name, spec.gguf_file, spec.dtype, seed=self.config.seed)
        teacher.to(next(self.lm.parameters()).device)
        scales = (scale_tuning(self.lm, self.ptq.named_layers(), self.settings.group_size,
                               self.ptq.results, codebook=tune.codebook)
                  if tune.scales or tune.codebook else contextlib.nullcontext())
        with scales:
            losses = tune_float_parameters(self.lm, teacher, self.ptq.calib_tokens, tune,
                                           progress=self.trainer.is_global_zero)
        del teacher
        self.final["final/ppl_untuned"] = self.final["final/ppl"]
        self.final["final/ppl"] = self._perplexity("GLVQ + tuning")["ppl"]
        self.final["final/tune_loss_first"] = losses[0]
        self.final["final/tune_loss_last"] = losses[-1]

    def _baseline_metrics(self, bits: int) -> dict[str, float]:
        """Perplexity of each baseline of ``model.eval.baselines`` at ``bits`` code bits, on the
        full-precision weights (calibrated ones, e.g. ``gptq``, block by block on the same
        calibration windows as GLVQ); the GLVQ weights are put back afterwards."""
        linears = quantizable_linears(self.lm)
        glvq = {k: m.weight.detach().clone() for k, m in linears.items()}
        out: dict[str, float] = {}
        for name, options in self.config.eval.baselines.items():
            options = {"group_size": self.settings.group_size, **options}
            baseline = LLM_BASELINES.build(name, bits=bits, **options)
            if getattr(baseline, "calibrated", False):  # e.g. GPTQ: block by block from fp
                with torch.no_grad():
                    for k, m in linears.items():
                        m.weight.copy_(self._fp_weights[k])
                info = quantize_with_baseline(self.lm, self.ptq.calib_tokens, baseline,
                                              self.config.calib_batch_size, self.config.lm.name,
                                              offload=self.config.calib_offload)
            else:
                info = apply_baseline(linears, baseline, self._fp_weights)
            out[f"final/ppl_{name}"] = self._perplexity(f"{name} {bits}-bit")["ppl"]
            out[f"final/bits_{name}"] = info["bits_per_weight"]
        with torch.no_grad():
            for k, m in linears.items():
                m.weight.copy_(glvq[k])
        return out

    def export(self, directory: str | Path | None = None) -> Path:
        """Write the quantized model (see :mod:`llvq.llm.io`); returns the directory."""
        d = Path(directory or self.config.export_dir
                 or Path(self.trainer.default_root_dir) / "quantized")
        settings = {k: v for k, v in self.config.to_dict().items() if k not in ("lm", "export_dir")}
        info = {"source": self.config.to_dict()["lm"], "settings": settings,
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

"""KV-cache codec evaluation as a step job (``model=kv_cache``): one step = one codec.

Set-up loads the language model and the evaluation text, scores the full-precision model and
records every layer's attention inputs once (:func:`llvq.kvcache.evaluate.capture_attention`).
Each step then takes the next codec of ``codecs`` (a registered quantizer and its options:
``{name: fibquant, bits: 2, block: 4}``) and measures it: attention-output cosine similarity
per layer against full precision, perplexity with every key and value read from a
:class:`~llvq.kvcache.CodecCache`, and the packed memory. Metrics are logged as
``kv/<label>/{cosine,cosine_min_layer,ppl,bits,compression}`` (label ``fibquant-b2-k4``) and
the table is written to ``<output_dir>/kv_cache.json`` after every codec; a checkpoint after a
codec lets an interrupted sweep resume at the next one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from llvq.kvcache.cache import build_codec
from llvq.kvcache.evaluate import attention_fidelity, cache_perplexity, capture_attention, memory
from llvq.modules.step_job import StepJob

log = logging.getLogger(__name__)

__all__ = ["KVCacheModule", "codec_label"]


def codec_label(spec: dict[str, Any]) -> str:
    """``name-b<bits>[-k<block>][-<lattice>]`` for a codec spec."""
    parts = [str(spec["name"]), f"b{spec.get('bits', '')}"]
    if "block" in spec:
        parts.append(f"k{spec['block']}")
    if "lattice" in spec:
        parts.append(str(spec["lattice"]))
    return "-".join(parts)


def _plain(x: Any) -> Any:
    return OmegaConf.to_container(x, resolve=True) if isinstance(x, DictConfig | ListConfig) else x


class KVCacheModule(StepJob):
    """Measure KV-cache codecs on a causal LM, one codec per step.

    Args:
        lm: ``{name, gguf_file, dtype}``: ``tiny-llama``, ``smollm2`` or a Hugging Face id/path.
        text: a :class:`llvq.data.text.TextDataModule` (its evaluation text; ``seq_len`` is the
            window length, ``eval_tokens`` the number of tokens scored).
        codecs: codec specs ``{name, **options}`` (``dim`` is the model's head width).
        fidelity_windows: windows (of ``text.seq_len``) used for the attention cosine.
        batch_size: windows per forward pass.
        results_file: where the table goes (``None``: ``<output_dir>/kv_cache.json``).
        seed: seeds the tiny model.
    """

    def __init__(self, lm: dict | None = None, text: Any = None, codecs: list | None = None,
                 fidelity_windows: int = 2, batch_size: int = 2,
                 results_file: str | None = None, seed: int = 0) -> None:
        super().__init__()
        lm, codecs = _plain(lm), _plain(codecs)
        if not codecs:
            raise ValueError("model.codecs is empty; list at least one codec, e.g. "
                             "[{name: fibquant, bits: 2, block: 4}]")
        for c in codecs:
            if not isinstance(c, dict) or "name" not in c:
                raise ValueError(f"every entry of model.codecs needs a quantizer `name`, got {c!r}")
        if fidelity_windows < 1 or batch_size < 1:
            raise ValueError("model.fidelity_windows and model.batch_size must be >= 1")
        self.save_hyperparameters(ignore=["text"])
        self.lm_spec = {"name": "tiny-llama", "gguf_file": None, "dtype": "float32", **(lm or {})}
        self.codecs = [dict(c) for c in codecs]
        if text is None:
            from llvq.data.text import TextDataModule
            text = TextDataModule(seq_len=256, eval_tokens=2048)
        self.text = text
        self._lm: list[torch.nn.Module] = []
        self.windows: Tensor | None = None
        self.captured: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.reference: dict[str, float] = {}

    @property
    def lm(self) -> torch.nn.Module:
        return self._lm[0]

    def units_per_epoch(self) -> int:
        return len(self.codecs)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self._lm:
            return
        from llvq.llm.models import load_causal_lm

        t = time.time()
        model, tok = load_causal_lm(self.lm_spec["name"], self.lm_spec.get("gguf_file"),
                                    self.lm_spec.get("dtype", "float32"), seed=self.hparams.seed)
        self._lm = [model]
        tokens = self.text.evaluation_tokens(tok)
        seq = self.text.seq_len
        if tokens.numel() < seq:
            raise ValueError(f"model.text gives {tokens.numel()} evaluation tokens, fewer than one "
                             f"window of seq_len={seq}; raise model.text.eval_tokens")
        self.windows = tokens[: tokens.numel() // seq * seq].view(-1, seq)  # (W, T)
        self.captured = capture_attention(model, self.windows[: self.hparams.fidelity_windows],
                                          self.hparams.batch_size)
        log.info("loaded %s and captured %d layers in %.1f s", self.lm_spec["name"],
                 len(self.captured), time.time() - t)

    def on_train_start(self) -> None:
        if not self.reference:
            self.reference = cache_perplexity(self.lm, self.windows, None, self.hparams.batch_size)
        self.log("kv/fp/ppl", self.reference["ppl"], batch_size=1)

    @property
    def head_dim(self) -> int:
        return int(next(iter(self.captured.values()))[1].shape[-1])

    def run_unit(self, index: int) -> None:
        todo = [c for c in self.codecs if codec_label(c) not in self.results]
        if not todo:
            return
        spec = todo[0]
        label = codec_label(spec)
        t = time.time()
        q = build_codec(spec, self.head_dim)
        fid = attention_fidelity(self.captured, q)
        ppl = cache_perplexity(self.lm, self.windows, q, self.hparams.batch_size)
        mem = memory(q)
        row = {"codec": spec, "cosine": fid["cosine"], "cosine_min_layer": fid["cosine_min_layer"],
               "key_rel_mse": fid["key_rel_mse"], "value_rel_mse": fid["value_rel_mse"],
               "ppl": ppl["ppl"], "ppl_fp": self.reference["ppl"], **mem,
               "seconds": time.time() - t}
        self.results[label] = row
        for key in ("cosine", "cosine_min_layer", "ppl", "bits_per_coordinate",
                    "compression_vs_fp16"):
            self.log(f"kv/{label}/{key}", float(row[key]), batch_size=1)
        log.info("%s: cosine %.4f, ppl %.3f (fp %.3f), %.3f bits/coord (%.1fx), %.0f s", label,
                 row["cosine"], row["ppl"], row["ppl_fp"], row["bits_per_coordinate"],
                 row["compression_vs_fp16"], row["seconds"])
        if self.trainer.is_global_zero:
            self.write_results()

    def write_results(self, path: str | Path | None = None) -> Path:
        """Write the reference and every finished codec as JSON; returns the path."""
        out = Path(path or self.hparams.results_file
                   or Path(self.trainer.default_root_dir) / "kv_cache.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        tokens = int(self.windows.numel()) if self.windows is not None else 0
        out.write_text(json.dumps({"model": self.lm_spec, "eval_tokens": tokens,
                                   "seq_len": self.text.seq_len,
                                   "fidelity_tokens": min(self.hparams.fidelity_windows,
                                                          len(self.windows)) * self.text.seq_len,
                                   "reference": self.reference, "codecs": self.results},
                                  indent=2) + "\n")
        return out

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["kv_cache"] = {"results": self.results, "reference": self.reference}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("kv_cache", {})
        self.results = dict(state.get("results", {}))
        self.reference = dict(state.get("reference", {}))

"""Settings of LLM post-training quantization as nested dataclasses (``model=llm_ptq``).

:class:`PTQConfig` is the whole job (the ``model.*`` node of ``configs/model/llm_ptq.yaml``):
the model to load (:class:`LMSpec`, ``model.lm``), the budget (``model.bits``,
``model.salience``), the per-layer GLVQ settings (:class:`GLVQSettings`, ``model.glvq``), the
evaluation (:class:`EvalSettings`, ``model.eval``) and the export. Every field is checked when
the config is built, and a bad value or an unknown key raises one ``ValueError`` (``TypeError``
for a value of the wrong kind) naming the setting (``model.glvq.lattice_dim``). ``PTQConfig.to_dict()`` is plain Python, so a checkpoint's
hyper-parameters rebuild the module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from llvq.llm.baselines import LLM_BASELINES
from llvq.quantizers.glvq import CODES

__all__ = ["EvalSettings", "GLVQSettings", "LMSpec", "PTQConfig", "TuneSettings", "from_options"]

LATTICE_DIMS = (2, 4, 8, 16, 32)
#: the largest ``model.bits``: a group is coded with at most 8 bits per weight
#: (:func:`llvq.llm.allocation.allocate_bits`), plus side information well under 1 bit
MAX_BITS = 9.0


def _plain(value: Any) -> Any:
    """A Hydra ``DictConfig`` / ``ListConfig`` as plain Python; anything else unchanged."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def from_options(cls: type, options: Any, setting: str) -> Any:
    """Build the dataclass ``cls`` from an instance, a mapping or ``None`` (all defaults).

    Raises:
        ValueError: a key ``cls`` does not have, named as ``<setting>.<key>``.
    """
    options = _plain(options)
    if options is None:
        return cls()
    if isinstance(options, cls):
        return options
    if not isinstance(options, dict):
        raise TypeError(f"{setting} must be a mapping of settings, got {type(options).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(k for k in options if k not in known)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(f'{setting}.{k}' for k in unknown)}; "
                         f"{setting} has: {', '.join(known)}")
    return cls(**options)


def _int(setting: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{setting} must be an integer >= {low}, got {value!r}")


def _number(setting: str, value: Any, low: float, strict: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (
        value > low if strict else value >= low)
    if not ok:
        raise ValueError(f"{setting} must be a number {'>' if strict else '>='} {low:g}, "
                         f"got {value!r}")


def _bool(setting: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{setting} must be true or false, got {value!r}")


@dataclass
class LMSpec:
    """The language model to quantize (``model.lm``).

    Attributes:
        name: ``tiny-llama``, ``smollm2``, a Hugging Face hub id or a local directory.
        gguf_file: a ``.gguf`` file inside ``name`` (needs the ``llm`` extra).
        dtype: the dtype the model is loaded in.
    """

    name: str = "tiny-llama"
    gguf_file: str | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"model.lm.name must be a model name or path, got {self.name!r}")
        if self.gguf_file is not None and not isinstance(self.gguf_file, str):
            raise ValueError(f"model.lm.gguf_file must be a file name or null, got {self.gguf_file!r}")


@dataclass
class GLVQSettings:
    """Settings of the per-layer optimisation (``model.glvq``).

    Attributes:
        group_size: input columns per group; must divide every layer's input width.
        lattice_dim: ``d``, the lattice dimension (2, 4, 8, 16 or 32); must divide ``group_size``.
        compand: allow a µ-law compander per group (False: the paper's "no companding"
            ablation). Each group keeps the compander only if it lowers the group's error at
            initialisation (a flag per group in the side information): the summary bounds µ to
            [10, 255], and for near-Gaussian groups any such µ is worse than no companding.
        row_scale: divide each output row by its RMS (stored in float16, ``16 / in`` bits per
            weight) before grouping; not in the paper's summary, on by default (see docs/llm.md).
        max_outer: most alternations (re-rounding of the codes).
        inner_steps: Adam steps on ``G`` and ``µ`` per alternation.
        lr: Adam step size for ``A`` (``G = G0 (I + A)``) and the µ logit.
        reg: weight of the Frobenius penalty ``||A||_F^2`` toward the initial generator.
        tol: per-group stopping tolerance on the relative improvement of the output error.
        init_scales: multiples of the Gaussian-optimal step tried at initialisation.
        error_feedback: quantize the groups of a layer left to right and fold each group's
            error into the columns not yet quantized (the optimal-brain-surgeon update GPTQ
            uses, here per group), each group's objective being its Schur-complement Hessian;
            so the cross-group terms of ``H`` count. False: all groups at once with the
            diagonal blocks of ``H`` (faster; the groups of a layer can then be shared out
            across DDP ranks).
        damp: ``H + damp * mean(diag H) * I`` before inverting (error feedback only).
        incoherence: quantize each layer in randomized-Hadamard-rotated coordinates
            (``U W V^T`` with ``V H V^T``; :mod:`llvq.llm.incoherence`), as QuIP# does; the
            transforms are rebuilt from a per-layer seed at load time, so they cost no bits.
        act_order: with error feedback, quantize the groups in decreasing order of their
            input energy (the sum of ``diag H`` over the group's columns) instead of left to
            right, so the groups that matter most are quantized first and the rest absorb their
            error (GPTQ's act-order, per group). Only the processing order changes: the groups
            are stored in place, so it costs no bits and the export format is unchanged.
        code: ``"box"`` (the paper's: ``2^b`` points per axis of each group's lattice) or
            ``"e8p"``: QuIP#'s E8P codebook (65,536 points of ``E8 + 1/4`` in a ball, 16 bits per
            8 weights) under each group's learned generator, for ``model.bits=2`` with
            ``lattice_dim=8``; every group then takes 2 bits (no salience allocation), so the
            stored rate is 2 bits plus the side information (see docs/llm.md).
        vector_feedback: inside each group, code one position of ``lattice_dim`` columns
            after another and fold each one's error into the group's columns not yet coded
            (BlockLDLQ, as QuIP# codes; the codes only, the generator step is unchanged), instead
            of coding every vector on its own. Costs no bits.
    """

    group_size: int = 128
    lattice_dim: int = 8
    compand: bool = True
    row_scale: bool = True
    max_outer: int = 6
    inner_steps: int = 5
    lr: float = 0.01
    reg: float = 1e-3
    tol: float = 1e-3
    init_scales: tuple[float, ...] = (0.7, 0.85, 1.0, 1.2)
    error_feedback: bool = True
    damp: float = 0.01
    incoherence: bool = False
    act_order: bool = False
    code: str = "box"
    vector_feedback: bool = False

    def __post_init__(self) -> None:
        p = "model.glvq"
        _int(f"{p}.group_size", self.group_size, 1)
        if self.lattice_dim not in LATTICE_DIMS or isinstance(self.lattice_dim, bool):
            raise ValueError(f"{p}.lattice_dim must be one of {', '.join(map(str, LATTICE_DIMS))}, "
                             f"got {self.lattice_dim!r}")
        for name in ("compand", "row_scale", "error_feedback", "incoherence", "act_order",
                     "vector_feedback"):
            _bool(f"{p}.{name}", getattr(self, name))
        if self.code not in CODES:
            raise ValueError(f"{p}.code must be one of {', '.join(CODES)}, got {self.code!r}")
        if self.code == "e8p" and self.lattice_dim != 8:
            raise ValueError(f"{p}.code=e8p codes 8-dimensional vectors: set {p}.lattice_dim=8 "
                             f"(got {self.lattice_dim})")
        _int(f"{p}.max_outer", self.max_outer, 0)
        _int(f"{p}.inner_steps", self.inner_steps, 0)
        _number(f"{p}.lr", self.lr, 0.0, strict=True)
        for name in ("reg", "tol", "damp"):
            _number(f"{p}.{name}", getattr(self, name), 0.0)
        scales = tuple(_plain(self.init_scales))
        if not scales or not all(isinstance(c, int | float) and c > 0 for c in scales):
            raise ValueError(f"{p}.init_scales must be a non-empty list of positive numbers, "
                             f"got {self.init_scales!r}")
        self.init_scales = tuple(float(c) for c in scales)


@dataclass
class EvalSettings:
    """What the run measures after the last block (``model.eval``).

    Attributes:
        fp: also report the full-precision perplexity (``final/ppl_fp``).
        baselines: names from :data:`llvq.llm.baselines.LLM_BASELINES` evaluated at the target
            bits on the full-precision weights (``final/ppl_<name>``, ``final/bits_<name>``);
            a list of names, or ``{name: {option: value}}``. Only for integer ``model.bits``.
        batch_size: windows per forward pass when evaluating.
    """

    fp: bool = True
    baselines: list[str] | dict[str, dict[str, Any]] = field(default_factory=lambda: ["rtn"])
    batch_size: int = 4

    def __post_init__(self) -> None:
        _bool("model.eval.fp", self.fp)
        _int("model.eval.batch_size", self.batch_size, 1)
        base = _plain(self.baselines)
        if base is None:
            base = []
        if isinstance(base, str):
            base = [base]
        if isinstance(base, list | tuple):
            base = {str(n): {} for n in base}
        if not isinstance(base, dict):
            raise TypeError(f"model.eval.baselines must be a list of names or a mapping "
                             f"name -> options, got {self.baselines!r}")
        for name, options in base.items():
            if name not in LLM_BASELINES:
                LLM_BASELINES.get(name)  # the registry's error, naming the known baselines
            if options is not None and not isinstance(options, dict):
                raise ValueError(f"model.eval.baselines.{name} must be a mapping of options, "
                                 f"got {options!r}")
        self.baselines = {n: dict(o or {}) for n, o in base.items()}


@dataclass
class TuneSettings:
    """Short tuning of the float parameters left after quantization (``model.tune``).

    After the last block, the parameters that are neither quantized weights nor the embedding
    table / head (:func:`llvq.llm.tune.tunable_parameters`: norm weights and biases; 35k of
    SmolLM2's 135M) are trained with Adam to match the full-precision model's next-token
    distributions (KL divergence per token) on random windows of the calibration text. The
    codes and side information do not change, nor does the rate.

    Attributes:
        steps: Adam steps (0: off, the default).
        lr: Adam learning rate.
        batch_size: calibration windows per step.
        seq_len: tokens per window (a random slice of a calibration window).
        seed: draws the windows and slices.
        scales: also tune the scales each quantized layer stores (GLVQ's float16 row and
            group scales; :func:`llvq.llm.tune.scale_tuning`), written back in float16: the
            codes and the rate still do not change.
        codebook: also tune GLVQ's codebooks, each group's float16 generator and µ, with the
            codes fixed (implies ``scales``; GLVQ only), written back in float16.
    """

    steps: int = 0
    lr: float = 2e-3
    batch_size: int = 2
    seq_len: int = 256
    seed: int = 0
    scales: bool = False
    codebook: bool = False

    def __post_init__(self) -> None:
        _int("model.tune.steps", self.steps, 0)
        _number("model.tune.lr", self.lr, 0.0, strict=True)
        _int("model.tune.batch_size", self.batch_size, 1)
        _int("model.tune.seq_len", self.seq_len, 2)
        _int("model.tune.seed", self.seed, 0)
        _bool("model.tune.scales", self.scales)
        _bool("model.tune.codebook", self.codebook)


@dataclass
class PTQConfig:
    """One LLM post-training quantization run (``model.*`` of ``model=llm_ptq``).

    Attributes:
        lm: the model (:class:`LMSpec`).
        bits: target bits per weight *including* side information, in ``[1, 9]`` (1.5
            allowed; codes take at most 8 bits per weight).
        salience: salience-driven bit allocation (off: equal widths, the ablation).
        glvq: the per-layer optimisation (:class:`GLVQSettings`).
        calib_batch_size: calibration windows per forward pass.
        calib_offload: a directory where the calibration hidden states are kept between blocks
            (one file per batch of windows) instead of memory, for calibration sets larger than
            memory; ``None`` (default): in memory.
        eval: the final evaluation (:class:`EvalSettings`).
        tune: tuning of the remaining float parameters after the last block
            (:class:`TuneSettings`; off by default).
        export_dir: where the quantized model is written (``None``: ``<output_dir>/quantized``).
        seed: seeds the tiny model (the text module has its own seed).
    """

    lm: LMSpec = field(default_factory=LMSpec)
    bits: float = 2.0
    salience: bool = True
    glvq: GLVQSettings = field(default_factory=GLVQSettings)
    calib_batch_size: int = 4
    calib_offload: str | None = None
    eval: EvalSettings = field(default_factory=EvalSettings)
    tune: TuneSettings = field(default_factory=TuneSettings)
    export_dir: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.lm = from_options(LMSpec, self.lm, "model.lm")
        self.glvq = from_options(GLVQSettings, self.glvq, "model.glvq")
        self.eval = from_options(EvalSettings, self.eval, "model.eval")
        self.tune = from_options(TuneSettings, self.tune, "model.tune")
        _number("model.bits", self.bits, 1.0)
        if self.bits > MAX_BITS:
            raise ValueError(f"model.bits must be a number in [1, {MAX_BITS:g}] (GLVQ codes take at "
                             f"most 8 bits per weight, plus side information), got {self.bits!r}")
        self.bits = float(self.bits)
        if self.glvq.code == "e8p" and self.bits != 2:
            raise ValueError(f"model.glvq.code=e8p codes exactly 2 bits per weight (16 per 8 "
                             f"weights, side information on top): set model.bits=2, got "
                             f"{self.bits:g}")
        _bool("model.salience", self.salience)
        _int("model.calib_batch_size", self.calib_batch_size, 1)
        if self.calib_offload is not None:
            if not isinstance(self.calib_offload, str | Path) or not str(self.calib_offload):
                raise ValueError(f"model.calib_offload must be a directory path or null, got "
                                 f"{self.calib_offload!r}")
            self.calib_offload = str(self.calib_offload)
        _int("model.seed", self.seed, 0)
        if self.export_dir is not None:
            self.export_dir = str(self.export_dir)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (the module's hyper-parameters); ``PTQConfig(**d)`` rebuilds it."""
        d = dataclasses.asdict(self)
        d["glvq"]["init_scales"] = list(d["glvq"]["init_scales"])
        return d

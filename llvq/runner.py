"""``run(cfg)``: compose → instantiate → fit → test. The body of ``train.py`` and ``llvq-train``.

Every job (autoencoder, prior, federated rounds, LLM quantization, lattice design) goes through
this one function: it loads the plugins the config lists (``plugins``), instantiates
``cfg.data``, ``cfg.model``, the callbacks, the loggers and the trainer, calls ``trainer.fit``
(resuming from ``cfg.ckpt_path`` when set) and, with ``test: true``, ``trainer.test`` on the best
checkpoint. :func:`metric_value` picks ``cfg.optimized_metric`` out of the result for a Hydra
sweeper (``train.py`` returns it).

Resume is explicit only (``docs/reliability.md``): ``ckpt_path: null`` starts fresh and refuses
a run folder that already holds checkpoints; ``ckpt_path=last`` is the newest ``last.ckpt`` of
the same ``task_name``; a checkpoint saved with other model settings is refused with the list of
differences. Every trainer writes checkpoints atomically (:class:`AtomicCheckpointIO`) and
saves the random-generator states (:class:`~llvq.callbacks.RNGState`).
"""

from __future__ import annotations

import logging
import numbers
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate as _hydra_instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig, OmegaConf

from llvq.callbacks.resume_checkpoint import resume_command
from llvq.callbacks.rng_state import RNGState
from llvq.checkpoints import AtomicCheckpointIO, check_resume, find_last
from llvq.plugins import load_plugins

__all__ = ["metric_value", "run"]

log = logging.getLogger("llvq")


def instantiate(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that re-raises the user's own error, not Hydra's wrapper.

    Hydra wraps an exception raised inside a constructor in ``InstantiationException`` (once per
    nesting level); the clear message llvq wrote (e.g. "unknown quantizer ...") is the root cause.
    """
    try:
        return _hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        root: BaseException = err
        while isinstance(root, InstantiationException) and root.__cause__ is not None:
            root = root.__cause__
        if root is err:
            raise
        raise root.with_traceback(root.__traceback__) from None


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a callbacks/logger group (null = off)."""
    if not group:
        return []
    return [instantiate(node) for node in group.values()
            if isinstance(node, DictConfig) and "_target_" in node]


def _resolve_ckpt(cfg: DictConfig) -> str | None:
    """``cfg.ckpt_path`` as a file to resume from (``last``: the task's newest ``last.ckpt``).

    Without ``ckpt_path`` the run must start fresh: a run folder that already holds checkpoints
    is refused (Lightning would otherwise continue or clobber them).
    """
    ckpt_path = cfg.get("ckpt_path")
    out = Path(cfg.paths.output_dir) / "checkpoints"
    if ckpt_path is None:
        held = sorted(out.glob("*.ckpt")) if out.is_dir() else []
        if held:
            raise FileExistsError(f"the run folder {out.parent} already holds checkpoints "
                                  f"({', '.join(p.name for p in held)}); resume it with "
                                  f"ckpt_path={out / 'last.ckpt'} or start a fresh run in a new "
                                  "folder (the default hydra.run.dir is a new timestamped one)")
        return None
    if not isinstance(ckpt_path, str) or not ckpt_path:
        raise ValueError(f"ckpt_path must be a path to a .ckpt file, `last` or null, got "
                         f"{ckpt_path!r}")
    if ckpt_path == "last":
        found = find_last(cfg.paths.log_dir, cfg.task_name)
        log.info("ckpt_path=last: resuming %s", found)
        return str(found)
    return ckpt_path


def _check_settings(cfg: DictConfig) -> None:
    """One clear error per bad top-level or trainer setting, before anything is built."""
    seed = cfg.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or null, got {seed!r}")
    trainer = cfg.get("trainer") or {}
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.accelerator={accelerator} (trainer=gpu/ddp) but no CUDA GPU "
                         "is visible to torch on this machine; use trainer=cpu (or check "
                         "CUDA_VISIBLE_DEVICES and the torch build)")
    for key in ("limit_train_batches", "max_epochs", "max_steps"):
        value = trainer.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise ValueError(f"trainer.{key} must be a number, got {value!r}")
    limit = trainer.get("limit_train_batches")
    if limit is not None and limit <= 0 and not trainer.get("fast_dev_run"):
        raise ValueError(f"trainer.limit_train_batches={limit} trains nothing; use a positive "
                         "number of batches (int) or fraction (float), or null for all")


def _plugins(trainer_cfg: DictConfig) -> list[Any]:
    """The trainer's plugins plus :class:`AtomicCheckpointIO` (unless one sets its own IO)."""
    listed = trainer_cfg.get("plugins")
    return [] if listed else [AtomicCheckpointIO()]


def run(cfg: DictConfig) -> dict[str, float]:
    """Train (or run) the job described by a composed config.

    Args:
        cfg: the composed Hydra config (``configs/train.yaml`` + overrides).

    Returns:
        The trainer's final ``callback_metrics`` as floats.
    """
    load_plugins(cfg.get("plugins") or None)
    OmegaConf.resolve(cfg)
    _check_settings(cfg)
    ckpt_path = _resolve_ckpt(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)

    # `data: null` is allowed for jobs whose module makes its own batches (e.g. lattice design)
    datamodule = instantiate(cfg.data) if cfg.get("data") is not None else None
    model = instantiate(cfg.model)
    if ckpt_path is not None:  # before the trainer: one message, not a wall of state-dict keys
        check_resume(ckpt_path, model.hparams)
    callbacks = [*_instantiate_group(cfg.get("callbacks")), RNGState()]
    loggers = _instantiate_group(cfg.get("logger"))
    extra = _plugins(cfg.trainer)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                     **({"plugins": extra} if extra else {}))

    if trainer.is_global_zero:
        log.info("output directory: %s", cfg.paths.output_dir)
        for lg in loggers:
            log.info("logs (%s): %s   view with: tensorboard --logdir %s",
                     type(lg).__name__, lg.log_dir, cfg.paths.output_dir)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = _scalars(trainer.callback_metrics)
    if cfg.get("test"):
        metrics.update(_test(trainer, model, datamodule))
    log.info("[rank %d/%d] finished: global_step=%d epoch=%d", trainer.global_rank,
             trainer.world_size, trainer.global_step, trainer.current_epoch)
    if trainer.is_global_zero:
        _report(trainer, metrics, cfg)
    return metrics


def _scalars(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v.numel() == 1}


def _test(trainer: L.Trainer, model: L.LightningModule, datamodule: Any) -> dict[str, float]:
    """``trainer.test`` on the best checkpoint (the weights in memory when none was kept)."""
    if not is_overridden("test_step", model):
        raise ValueError(f"test=true, but {type(model).__name__} has no test stage; "
                         f"set test=false for this job")
    ckpt = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    best = ckpt.best_model_path if ckpt is not None else ""
    if trainer.is_global_zero:
        log.info("testing %s", best or "the final weights (no best checkpoint was kept)")
    results = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    out = _scalars(trainer.callback_metrics)
    for row in results:
        out.update({k: float(v) for k, v in row.items()})
    return out


def metric_value(metrics: dict[str, float], name: str | None) -> float | None:
    """The value of ``optimized_metric`` for a Hydra sweeper, or ``None`` when not set.

    Raises:
        KeyError: ``name`` was not logged; the message lists what was.
    """
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric={name!r} was not logged by this run; logged metrics: "
                       f"{', '.join(sorted(metrics)) or '(none)'}")
    return metrics[name]


def _report(trainer: L.Trainer, metrics: dict[str, float], cfg: DictConfig) -> None:
    ckpt = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    shown = {k: round(v, 6) for k, v in sorted(metrics.items())
             if k.startswith(("val/", "test/", "final/"))}
    log.info("final metrics: %s", shown or "(no validation or test metrics were logged)")
    if ckpt is not None and ckpt.last_model_path and Path(ckpt.last_model_path).is_file():
        log.info("checkpoints: %s (best: %s, last: %s)", ckpt.dirpath,
                 ckpt.best_model_path or "-", ckpt.last_model_path)
        log.info("continue training (raise trainer.max_epochs) with: %s",
                 resume_command(ckpt.last_model_path))
    log.info("tensorboard: tensorboard --logdir %s", cfg.paths.output_dir)

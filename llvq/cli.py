"""Console scripts. ``llvq-train`` is ``python train.py`` usable from any directory."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["config_dir", "train_main"]


def config_dir() -> Path:
    """The Hydra config directory: ``$LLVQ_CONFIG_DIR``, ``./configs``, or the source checkout's."""
    candidates = [os.environ.get("LLVQ_CONFIG_DIR"), Path.cwd() / "configs",
                  Path(__file__).resolve().parents[1] / "configs"]
    for cand in candidates:
        if cand and (Path(cand) / "train.yaml").is_file():
            return Path(cand).resolve()
    raise FileNotFoundError("no Hydra configs found: set LLVQ_CONFIG_DIR to a folder holding "
                            "train.yaml, or run from the llvq source checkout")


def train_main() -> None:
    """Entry point of ``llvq-train``: ``@hydra.main`` over :func:`llvq.run`."""
    import hydra
    from omegaconf import DictConfig

    from llvq.plugins import load_plugins
    from llvq.quiet import quiet_known_noise
    from llvq.runner import metric_value, run

    quiet_known_noise()
    load_plugins()

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
    def _main(cfg: DictConfig) -> float | None:
        quiet_known_noise()  # again, now that Hydra configured logging
        return metric_value(run(cfg), cfg.get("optimized_metric"))

    _main()

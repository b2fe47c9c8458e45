"""Train any llvq job: ``python train.py experiment=<name> <overrides>``.

Returns ``optimized_metric`` (when the config sets it) so a Hydra sweeper can optimise it.
Lightning is imported only once the config is composed, so ``--help`` and config errors answer
at once.
"""

import hydra
from omegaconf import DictConfig

from llvq.plugins import load_plugins
from llvq.quiet import quiet_known_noise


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from llvq.runner import metric_value, run  # heavy: torch + Lightning

    quiet_known_noise()  # again, now that Lightning is imported and Hydra configured logging
    return metric_value(run(cfg), cfg.get("optimized_metric"))


if __name__ == "__main__":
    quiet_known_noise()
    load_plugins()  # outside packages register their quantizers before the config is composed
    main()

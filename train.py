"""Train any llvq job: ``python train.py experiment=<name> <overrides>``.

Returns ``optimized_metric`` (when the config sets it) so a Hydra sweeper can optimise it.
Lightning is imported only once the config is composed, so ``--help`` and config errors answer
at once. A bad setting prints one line, ``error: <message>``, and exits 1
(``LLVQ_TRACEBACK=1`` shows the traceback; see :func:`llvq.cli.one_line_errors`).
"""

import hydra
from omegaconf import DictConfig

from llvq.cli import one_line_errors
from llvq.plugins import load_plugins
from llvq.quiet import quiet_known_noise


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from llvq.runner import metric_value, run  # heavy: torch + Lightning

    quiet_known_noise()  # again, now that Lightning is imported and Hydra configured logging
    with one_line_errors():
        return metric_value(run(cfg), cfg.get("optimized_metric"))


if __name__ == "__main__":
    quiet_known_noise()
    with one_line_errors():
        load_plugins()  # outside packages register their quantizers before the config is composed
    main()

"""Train any llvq job: ``python train.py experiment=<name> <overrides>``."""

import hydra
from omegaconf import DictConfig

from llvq.runner import run


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()

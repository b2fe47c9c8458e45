"""Every configs/data/*.yaml instantiates its datamodule with the keys it declares."""

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from llvq.data import ImageDataModule

CONFIGS = sorted((Path(__file__).parents[2] / "configs" / "data").glob("*.yaml"))
# `codes` reads an llvq-export directory; it is tested with the prior (tests/modules/test_prior.py)
NOT_IMAGES = ("llvq.data.CodesDataModule", "llvq.data.TextDataModule")
IMAGE_CONFIGS = [p for p in CONFIGS if OmegaConf.load(p)._target_ not in NOT_IMAGES]


@pytest.mark.parametrize("path", IMAGE_CONFIGS, ids=[p.stem for p in IMAGE_CONFIGS])
def test_data_config_instantiates(path, tmp_path):
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "data": OmegaConf.load(path)})
    dm = instantiate(cfg.data)
    assert isinstance(dm, ImageDataModule)
    assert (dm.channels, dm.image_size) == (cfg.data.channels, cfg.data.image_size)
    assert dm.data_dir == tmp_path


def test_every_datamodule_has_a_config():
    import llvq.data

    targets = {OmegaConf.load(p)._target_ for p in CONFIGS}
    modules = {
        f"llvq.data.{name}"
        for name in llvq.data.__all__
        if name.endswith("DataModule") and name != "ImageDataModule"
    }
    assert modules == targets

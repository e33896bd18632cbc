import os

import pytest
import torch

from detectron2.config import get_cfg

from ssd_d2 import add_ssd_config

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")


def load_config(name: str, *opts):
    """The config ``configs/<name>.yaml`` on the CPU, with ``opts`` merged, not frozen."""
    cfg = get_cfg()
    add_ssd_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, f"{name}.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """One ssd_shapes cache (SSD_D2_DATASETS) for the tests that run train_net.py."""
    return tmp_path_factory.mktemp("ssd_shapes")

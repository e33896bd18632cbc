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

"""What the command line tools share: loading a config, checking input files, saving figures."""

import os
from typing import Optional, Sequence

from detectron2.config import CfgNode, get_cfg

from ssd_d2 import add_ssd_config  # importing ssd_d2 registers the SSD components
from ssd_d2.config import merge_from_file_safely

__all__ = ["check_weights", "load_config", "save_figure"]


def load_config(config_file: str, opts: Optional[Sequence[str]] = None) -> CfgNode:
    """
    ``config_file`` merged onto Detectron2's and ssd_d2's defaults, then ``opts`` (KEY VALUE
    pairs, as train_net.py takes them). Not frozen.

    Raises:
        FileNotFoundError: naming the config file when it does not exist.
    """
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"Config file not found: {config_file}")
    cfg = get_cfg()
    add_ssd_config(cfg)
    merge_from_file_safely(cfg, config_file)
    cfg.merge_from_list(list(opts or []))
    return cfg


def check_weights(cfg: CfgNode) -> Optional[str]:
    """
    Check ``cfg.MODEL.WEIGHTS`` before building a model: returns a warning when it is empty
    (the model keeps its random initialisation), None when it names a checkpoint.

    Raises:
        FileNotFoundError: when it names a local file that does not exist.
    """
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        return "MODEL.WEIGHTS is empty: the model has random weights."
    # URLs and detectron2:// paths are resolved by Detectron2's checkpointer.
    if "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS file not found: {weights}")
    return None


def save_figure(fig, path: str, dpi: int = 100) -> str:
    """
    Save a matplotlib figure as ``path`` (folders created) and return the path. The tools
    build ``matplotlib.figure.Figure`` objects directly, without pyplot, so that they need no
    display and leave the caller's matplotlib backend alone.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path

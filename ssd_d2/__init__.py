"""ssd_d2: the SSD family of detectors for Detectron2. Importing it registers every component."""

from .config import add_ssd_config
from .data import SSDDatasetMapper
from .engine import SSDTrainer
from .modeling import SSD

__all__ = ["add_ssd_config", "SSD", "SSDDatasetMapper", "SSDTrainer"]

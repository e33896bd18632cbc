from .checkpoint import SSDCheckpointer
from .launch import DEFAULT_TIMEOUT, launch
from .trainer import SSDTrainer

from .checkpoint import SSDCheckpointer
from .launch import default_timeout, launch
from .trainer import SSDTrainer

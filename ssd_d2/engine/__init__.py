from .checkpoint import SSDCheckpointer, load_weights
from .launch import DEFAULT_TIMEOUT, launch
from .predictor import SSDPredictor
from .trainer import SSDTrainer

from .checkpoint import SSDCheckpointer, load_weights
from .launch import default_timeout, launch
from .predictor import SSDPredictor
from .trainer import SSDTrainer

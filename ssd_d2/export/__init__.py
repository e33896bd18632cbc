"""Export a whole SSD detector to TorchScript, ONNX or OpenVINO, in float32 or int8
(``model``, ``runtimes``), check it (``verify``) and run it as a Detectron2 model
(``predictor``)."""

from .formats import *  # noqa: F401,F403
from .model import *  # noqa: F401,F403
from .predictor import *  # noqa: F401,F403
from .runtimes import *  # noqa: F401,F403
from .verify import *  # noqa: F401,F403

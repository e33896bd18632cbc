"""Export a whole SSD detector to TorchScript or ONNX (``model``) and check it (``verify``)."""

from .model import *  # noqa: F401,F403
from .verify import *  # noqa: F401,F403

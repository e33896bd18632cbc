# Published SSD weights (and the ImageNet backbones they train from) in ssd_d2's layout: the
# per-source rule tables (rules) and the mapping core (core), pure functions of state dicts
# shared by MODEL.WEIGHTS and `python -m ssd_d2.tools.convert`, which reads and writes files.
from .core import (
    KNOWN_FORMATS,
    SOURCES,
    Conversion,
    ConversionError,
    coco_category_ids,
    convert_for_model,
    recognize,
)
from .rules import SPECS

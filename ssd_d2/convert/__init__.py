# Published SSD weights (and the ImageNet backbones they train from) in ssd_d2's layout: the
# per-source rule tables (rules) and the mapping core (core), shared by MODEL.WEIGHTS and
# `python -m ssd_d2.tools.convert`. Files are read and written by ssd_d2.engine.checkpoint.
from .core import (
    KNOWN_FORMATS,
    SOURCES,
    Conversion,
    ConversionError,
    coco_category_ids,
    convert,
    convert_for_model,
    recognize,
)
from .rules import SPECS

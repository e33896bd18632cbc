# Published SSD weights (and the ImageNet backbones they train from) in ssd_d2's layout: the
# per-source rule tables (rules) and the mapping core (core), pure functions of state dicts
# shared by MODEL.WEIGHTS and `python -m ssd_d2.tools.convert`, which reads and writes files.
from .core import (
    ALREADY_OURS,
    KNOWN_FORMATS,
    SOURCES,
    Conversion,
    ConversionError,
    check_fits,
    coco_category_ids,
    convert_for_model,
    recognize,
    rename,
    unknown_format_message,
)
from .rules import CONV6_7, SPECS

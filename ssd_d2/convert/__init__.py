"""
Published SSD weights (and the ImageNet backbones they train from) in ssd_d2's layout: the
per-source rule tables (``rules``) and the mapping core (``core``), shared by MODEL.WEIGHTS
(the checkpointer converts a peer's file as it loads it) and ``python -m ssd_d2.tools.convert``.
Reading and writing files is the weights entrance's (:mod:`ssd_d2.engine.checkpoint`).
"""

from .core import (
    KNOWN_FORMATS,
    SOURCES,
    Conversion,
    ConversionError,
    coco_category_ids,
    convert,
    convert_for_model,
    recognize,
    rename,
)
from .rules import SPECS

__all__ = [
    "KNOWN_FORMATS",
    "SOURCES",
    "SPECS",
    "Conversion",
    "ConversionError",
    "coco_category_ids",
    "convert",
    "convert_for_model",
    "recognize",
    "rename",
]

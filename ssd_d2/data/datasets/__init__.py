"""Data sets: the embedded ssd_shapes set, checks for Detectron2's built-in ones, VOC flags."""

from .builtin import check_dataset_files
from .shapes import (
    SHAPE_CLASSES,
    SHAPES_SPLITS,
    generate_shapes_dataset,
    register_shapes_dataset,
    shapes_dataset_root,
)
from .voc import drop_voc_difficult, voc_difficult_flags

__all__ = [
    "check_dataset_files",
    "SHAPE_CLASSES",
    "SHAPES_SPLITS",
    "generate_shapes_dataset",
    "register_shapes_dataset",
    "shapes_dataset_root",
    "drop_voc_difficult",
    "voc_difficult_flags",
]

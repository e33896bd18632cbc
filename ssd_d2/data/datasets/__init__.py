"""Data sets: the embedded ssd_shapes set, and checks for Detectron2's built-in ones."""

from .builtin import check_dataset_files
from .shapes import (
    SHAPE_CLASSES,
    SHAPES_SPLITS,
    generate_shapes_dataset,
    register_shapes_dataset,
    shapes_dataset_root,
)

__all__ = [
    "check_dataset_files",
    "SHAPE_CLASSES",
    "SHAPES_SPLITS",
    "generate_shapes_dataset",
    "register_shapes_dataset",
    "shapes_dataset_root",
]

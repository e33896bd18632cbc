"""The embedded ssd_shapes set (registered on import) and Pascal VOC's difficult flags."""

from .shapes import (
    SHAPE_CLASSES,
    SHAPES_SPLITS,
    generate_shapes_dataset,
    register_shapes_dataset,
    shapes_dataset_root,
)
from .voc import drop_voc_difficult, voc_difficult_flags

register_shapes_dataset()

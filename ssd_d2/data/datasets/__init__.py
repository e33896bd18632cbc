"""The embedded ssd_shapes set (registered on import) and Pascal VOC's difficult flags."""

from .shapes import SHAPE_CLASSES, generate_shapes_dataset, register_shapes_dataset
from .voc import drop_voc_difficult

register_shapes_dataset()

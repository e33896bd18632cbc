"""The generated sets ssd_shapes, toy_signs, ssd_tall_objects, sparse_clutter and many_classes
(registered on import), data sets named by their files (``coco:JSON:IMAGES``,
``voc:ROOT:SPLIT``; registered by the entry points) and Pascal VOC's difficult flags."""

from .file_datasets import parse_dataset_name, register_config_datasets, register_dataset_name
from .shape_family import FAMILY, generate_family_member, register_shape_family
from .shapes import SHAPE_CLASSES, generate_shapes_dataset, register_shapes_dataset
from .tall_objects import TALL_OBJECT_CLASSES, generate_tall_objects, register_tall_objects
from .toy_signs import TOY_SIGN_CLASSES, generate_toy_signs, register_toy_signs
from .voc import drop_voc_difficult

register_shapes_dataset()
register_toy_signs()
register_tall_objects()
register_shape_family()

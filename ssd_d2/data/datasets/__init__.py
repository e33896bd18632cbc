"""The generated sets ssd_shapes and toy_signs (registered on import), data sets named by their
files (``coco:JSON:IMAGES``, ``voc:ROOT:SPLIT``; registered by the entry points) and Pascal VOC's
difficult flags."""

from .file_datasets import parse_dataset_name, register_config_datasets, register_dataset_name
from .shapes import SHAPE_CLASSES, generate_shapes_dataset, register_shapes_dataset
from .toy_signs import TOY_SIGN_CLASSES, generate_toy_signs, register_toy_signs
from .voc import drop_voc_difficult

register_shapes_dataset()
register_toy_signs()

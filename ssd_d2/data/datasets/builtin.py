"""Registers the embedded data set, and checks Detectron2's built-in VOC/COCO files are there."""

import os
from typing import Iterable

from detectron2.data import MetadataCatalog
from detectron2.data.datasets.builtin import _PREDEFINED_SPLITS_COCO

from .shapes import register_shapes_dataset

__all__ = ["check_dataset_files"]

_COCO_SPLITS = _PREDEFINED_SPLITS_COCO["coco"]


def _expected_paths(dataset_name: str):
    """Files or folders a Detectron2 built-in data set reads; empty for other data sets."""
    metadata = MetadataCatalog.get(dataset_name)
    if dataset_name.startswith("voc_") and metadata.get("dirname", None):
        split_file = os.path.join(metadata.dirname, "ImageSets", "Main", metadata.split + ".txt")
        return [split_file, os.path.join(metadata.dirname, "JPEGImages")]
    if dataset_name in _COCO_SPLITS:
        return [metadata.json_file, metadata.image_root]
    return []


def check_dataset_files(dataset_names: Iterable[str]) -> None:
    """
    Fail early, naming the expected path and the fix, when a built-in VOC or COCO data set
    is not where Detectron2 looks for it (``$DETECTRON2_DATASETS``, default ``./datasets``).
    """
    for name in dataset_names:
        missing = [p for p in _expected_paths(name) if not os.path.exists(p)]
        if missing:
            root = os.getenv("DETECTRON2_DATASETS", "datasets")
            raise FileNotFoundError(
                f"Data set {name!r} is missing {missing[0]}. Detectron2 looks for VOC and COCO "
                f"under DETECTRON2_DATASETS (now {os.path.abspath(root)!r}): put VOC2007/, "
                "VOC2012/ and coco/ there as described in detectron2's datasets/README.md, "
                "or set DETECTRON2_DATASETS to the folder that holds them."
            )


register_shapes_dataset()

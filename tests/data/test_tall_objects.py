"""ssd_tall_objects: small, tall objects on 16:9 images, registered on import, generated on first
use; and its boxes as the network input sees them."""

import json
import os

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ssd_d2.data.box_statistics import dataset_boxes
from ssd_d2.data.datasets.tall_objects import (
    TALL_OBJECT_CLASSES,
    TALL_OBJECTS_TRAIN,
    TALL_OBJECTS_VAL,
    generate_tall_objects,
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("tall_objects"))
    generate_tall_objects(output_dir, num_images=30, seed=0)
    with open(os.path.join(output_dir, "annotations.json")) as f:
        return json.load(f)


def test_registered_on_import():
    for name in (TALL_OBJECTS_TRAIN, TALL_OBJECTS_VAL):
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).thing_classes == list(TALL_OBJECT_CLASSES)


def test_wide_images_of_tall_objects(generated):
    assert [c["name"] for c in generated["categories"]] == ["pole", "person", "tree"]
    images = {image["id"]: image for image in generated["images"]}
    for image in images.values():
        assert 288 <= image["width"] <= 352 and image["height"] == image["width"] * 9 // 16
    aspects = {name: [] for name in TALL_OBJECT_CLASSES}
    for ann in generated["annotations"]:
        x, y, w, h = ann["bbox"]
        image = images[ann["image_id"]]
        assert x >= 0 and y >= 0 and x + w <= image["width"] and y + h <= image["height"]
        assert 8 <= w <= 46
        aspects[TALL_OBJECT_CLASSES[ann["category_id"] - 1]].append(h / w)
    # Every class appears; each is taller than wide, poles the most, trees the least.
    medians = [np.median(aspects[name]) for name in TALL_OBJECT_CLASSES]
    assert medians[0] > medians[1] > medians[2] > 1.3


def test_boxes_at_the_network_input():
    dicts = [
        {
            "height": 180,
            "width": 320,
            "annotations": [
                {"bbox": [32, 18, 16, 36], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
                {
                    "bbox": [0, 0, 5, 5],
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "category_id": 0,
                    "iscrowd": 1,
                },
            ],
        },
        {
            "height": 90,
            "width": 160,
            "annotations": [
                {"bbox": [16, 9, 32, 18], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1},
            ],
        },
    ]
    boxes = dataset_boxes(dicts)
    assert len(boxes) == 2  # the crowd box left out
    np.testing.assert_allclose(boxes.sizes, [[16, 36], [16, 9]])
    assert boxes.typical_aspect() == pytest.approx(16 / 9)
    # Stretched to 160x160: x by 160 / width, y by 160 / height, image by image.
    np.testing.assert_allclose(
        boxes.at_input((160, 160)), [[16, 16, 24, 48], [16, 16, 32, 32]], rtol=1e-6
    )

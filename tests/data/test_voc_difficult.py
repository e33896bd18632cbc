"""Pascal VOC's difficult objects: dropped from training by default, as lufficc/SSD does."""

import uuid

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_pascal_voc

from ssd_d2.data import build_ssd_train_loader
from ssd_d2.data.datasets import drop_voc_difficult

from ..conftest import load_config
from .voc_files import write_voc

CLASSES = ("a", "b")


def _voc(root, objects_per_image):
    """A VOC folder of black 60x40 images; each object is (name, difficult), or (name, None)
    without the tag, its boxes shifted by one pixel each."""
    objects = [
        [(name, (5 + k, 5, 30, 30), difficult) for k, (name, difficult) in enumerate(objs)]
        for objs in objects_per_image
    ]
    return write_voc(root, objects, "trainval", np.zeros((40, 60, 3), dtype=np.uint8))


@pytest.fixture
def voc_dataset(tmp_path):
    name = f"voc_difficult_{uuid.uuid4().hex[:8]}"
    objects = [[("a", 0), ("b", 1), ("a", None)], [("b", 1)], [("b", 0)]]
    register_pascal_voc(name, _voc(tmp_path, objects), "trainval", 2007, class_names=CLASSES)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_difficult_objects_are_dropped(voc_dataset):
    dicts = DatasetCatalog.get(voc_dataset)
    kept, dropped = drop_voc_difficult(voc_dataset, dicts)
    assert dropped == 2
    # In file order: the difficult "b" of the first image and the only object of the second.
    assert [[a["category_id"] for a in d["annotations"]] for d in kept] == [[0, 0], [], [1]]
    assert [a["bbox"][0] for a in kept[0]["annotations"]] == [4.0, 6.0]
    assert [len(d["annotations"]) for d in dicts] == [3, 1, 1]  # the input is not modified


def test_other_data_sets_are_unchanged():
    dicts = [{"image_id": 0, "annotations": [{"category_id": 0}]}]
    assert drop_voc_difficult("ssd_shapes_val", dicts) == (dicts, 0)


def test_annotations_that_do_not_follow_the_objects_fail_clearly(voc_dataset):
    dicts = DatasetCatalog.get(voc_dataset)
    dicts[0]["annotations"] = dicts[0]["annotations"][:1]
    with pytest.raises(ValueError, match="000000.xml has 3 objects.*DROP_VOC_DIFFICULT False"):
        drop_voc_difficult(voc_dataset, dicts)


@pytest.mark.parametrize("drop, expected", [(True, 3), (False, 5)])
def test_the_training_loader_drops_them_by_default(voc_dataset, drop, expected):
    cfg = load_config(
        "ssd160_shapes_demo",
        "DATASETS.TRAIN",
        f"('{voc_dataset}',)",
        "MODEL.SSD.NUM_CLASSES",
        "2",
        "DATALOADER.NUM_WORKERS",
        "0",
        *([] if drop else ["INPUT.SSD.DROP_VOC_DIFFICULT", "False"]),
    )
    assert load_config("ssd300_voc").INPUT.SSD.DROP_VOC_DIFFICULT is True
    dataset = build_ssd_train_loader(cfg).stream.dataset
    assert sum(len(dataset[i]["annotations"]) for i in range(len(dataset))) == expected

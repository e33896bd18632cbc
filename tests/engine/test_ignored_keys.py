"""The WARNING that names the Detectron2 keys SSD ignores, and the SSD keys to set instead."""

import copy
import glob
import logging
import os

import numpy as np
import pytest
import torch

from detectron2.modeling import build_model

from ssd_d2 import SSDDatasetMapper
from ssd_d2.config import load_config
from ssd_d2.data.datasets import generate_shapes_dataset
from ssd_d2.ignored_keys import _flat, _rule_for, find_ignored_keys

from ..conftest import CONFIG_DIR

SHIPPED_CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))
DEMO_CONFIG = os.path.join(CONFIG_DIR, "ssd160_shapes_demo.yaml")


@pytest.fixture
def warnings_of_ignored_keys():
    """The WARNING records of ssd_d2.ignored_keys (its logger may not propagate to the root)."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("ssd_d2.ignored_keys")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=os.path.basename)
def test_shipped_configs_set_no_ignored_key(path):
    assert find_ignored_keys(load_config(path)) == []


def test_building_the_model_warns_once_naming_both_keys_and_their_replacements(
    warnings_of_ignored_keys,
):
    opts = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(512, 544)"]
    opts += ["MODEL.ROI_HEADS.NUM_CLASSES", "3"]
    build_model(load_config(DEMO_CONFIG, opts))
    assert len(warnings_of_ignored_keys) == 1
    message = warnings_of_ignored_keys[0].getMessage()
    assert "2 Detectron2 key(s) that SSD models do not read" in message
    assert "INPUT.MIN_SIZE_TRAIN = (512, 544): use MODEL.SSD.IMAGE_SIZE" in message
    assert "MODEL.ROI_HEADS.NUM_CLASSES = 3: use MODEL.SSD.NUM_CLASSES" in message

    warnings_of_ignored_keys.clear()
    build_model(load_config(DEMO_CONFIG, ["MODEL.DEVICE", "cpu"]))
    assert warnings_of_ignored_keys == []


def test_test_size_default_is_the_ssd_configs_zero():
    # Detectron2's 800 would make DefaultPredictor resize before the model's own resize.
    cfg = load_config(DEMO_CONFIG, ["INPUT.MIN_SIZE_TEST", "800"])
    assert [k.key for k in find_ignored_keys(cfg)] == ["INPUT.MIN_SIZE_TEST"]


def test_keys_that_another_component_reads_are_not_reported():
    cfg = load_config(DEMO_CONFIG, ["MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 32]]"])
    assert [k.key for k in find_ignored_keys(cfg)] == ["MODEL.ANCHOR_GENERATOR.SIZES"]
    # Detectron2's own anchor generator reads its SIZES.
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"
    assert find_ignored_keys(cfg) == []


def _changed(value):
    """Another value of the same type (None when there is none to make)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "_changed"
    if isinstance(value, (list, tuple)) and value:
        return type(value)(_changed(v) for v in value)
    return None


def _with_every_ignored_key_changed(cfg):
    """A copy of ``cfg`` with every key the rules cover changed, and those keys."""
    changed = copy.deepcopy(cfg)
    keys = []
    for key, value in _flat(cfg).items():
        if _rule_for(key) is None:
            continue
        new = _changed(value)
        if new is not None:
            changed.merge_from_list([key, new])
            keys.append(key)
    return changed, keys


def test_every_reported_key_changes_nothing(tmp_path):
    """The rules are true: a model and a training sample are the same with the keys changed."""
    cfg = load_config(DEMO_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.VGG.NORM", ""])
    changed, keys = _with_every_ignored_key_changed(cfg)
    assert len(keys) >= 30  # the whole RETINANET subtree, INPUT.CROP.*, ...
    assert sorted(k.key for k in find_ignored_keys(changed)) == sorted(keys)
    assert find_ignored_keys(cfg) == []

    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.manual_seed(0)
    model_changed = build_model(changed).eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), model_changed.state_dict().items()):
        assert torch.equal(a, b), name
    image = torch.randint(0, 256, (3, 90, 120), dtype=torch.uint8)
    with torch.no_grad():
        (a,), (b,) = model([{"image": image}]), model_changed([{"image": image}])
    assert torch.equal(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)

    generate_shapes_dataset(str(tmp_path), num_images=1, seed=5)
    record = {
        "file_name": str(next((tmp_path / "images").iterdir())),
        "annotations": [{"bbox": [10, 10, 50, 60], "bbox_mode": 0, "category_id": 1}],
    }
    samples = []
    for c in (cfg, changed):
        np.random.seed(3)
        samples.append(SSDDatasetMapper(c, is_train=True)(copy.deepcopy(record)))
    assert torch.equal(samples[0]["image"], samples[1]["image"])
    a, b = samples[0]["instances"], samples[1]["instances"]
    assert torch.equal(a.gt_boxes.tensor, b.gt_boxes.tensor)
    assert torch.equal(a.gt_classes, b.gt_classes)

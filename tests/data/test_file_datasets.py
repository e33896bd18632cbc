"""
Data sets named by their files (``coco:JSON:IMAGES``, ``voc:ROOT:SPLIT[:NAMES]``): registered
from the config with absolute paths, loaded by Detectron2's COCO and VOC loaders, evaluated by
their evaluators, trained on by train_net.py; each kind of bad input fails with its own message.
"""

import json
import os
import re

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASSES
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.structures import Boxes, Instances

from ssd_d2 import SSDTrainer
from ssd_d2.data import DatasetError, register_config_datasets
from ssd_d2.data.datasets import SHAPE_CLASSES, generate_shapes_dataset
from ssd_d2.tools import common, demo, visualize_data

from ..conftest import CONFIG_DIR, load_config
from ..engine.test_train_net import _train_net
from .voc_files import write_voc

COCO_NAME = "coco:mine/annotations.json:mine/images"


@pytest.fixture
def in_tmp_path(tmp_path, monkeypatch, unregister):
    """The test runs in tmp_path, where the relative paths of its data set names point."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def coco_files(in_tmp_path):
    """A 4-image ssd_shapes set as a user's files: mine/annotations.json, mine/images/."""
    generate_shapes_dataset(str(in_tmp_path / "mine"), num_images=4, seed=3)
    return in_tmp_path


def _voc(root, names_per_image, split, evaluation_fields=True):
    """A VOC folder of black 60x40 images, one 25x25 box per object name, with the fields that
    Detectron2's VOC evaluator reads (``evaluation_fields``) or without."""
    objects = [[(name, (5, 5, 30, 30), None) for name in names] for names in names_per_image]
    write_voc(root, objects, split, np.zeros((40, 60, 3), dtype=np.uint8))
    for xml_file in (root / "Annotations").iterdir() if evaluation_fields else ():
        fields = "<pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        xml_file.write_text(xml_file.read_text().replace("<bndbox>", fields + "<bndbox>"))


def _config(*opts):
    return load_config("ssd160_shapes_demo", "MODEL.SSD.NUM_CLASSES", 5, *opts)


def _register(train, test=(), num_classes=5):
    cfg = _config("DATASETS.TRAIN", tuple(train), "DATASETS.TEST", tuple(test))
    cfg.MODEL.SSD.NUM_CLASSES = num_classes
    register_config_datasets(cfg)
    return cfg


def test_coco_files_register_with_absolute_paths_and_load(coco_files):
    cfg = _register([COCO_NAME], [COCO_NAME])
    name = f"coco:{coco_files}/mine/annotations.json:{coco_files}/mine/images"
    assert cfg.DATASETS.TRAIN == (name,) and cfg.DATASETS.TEST == (name,)
    metadata = MetadataCatalog.get(name)
    # The class names are known before the data set is loaded (the demo draws them).
    assert metadata.thing_classes == list(SHAPE_CLASSES)
    assert metadata.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(5)}

    os.chdir("/")  # the registered paths no longer depend on the current directory
    register_config_datasets(cfg)  # again: nothing to do
    dicts = DatasetCatalog.get(name)
    assert [d["file_name"] for d in dicts] == [
        f"{coco_files}/mine/images/{i:06d}.jpg" for i in range(1, 5)
    ]
    with open(coco_files / "mine" / "annotations.json") as f:
        num_boxes = len(json.load(f)["annotations"])
    assert sum(len(d["annotations"]) for d in dicts) == num_boxes > 0
    assert isinstance(SSDTrainer.build_evaluator(cfg, name), COCOEvaluator)


def test_voc_folder_of_voc_classes(in_tmp_path):
    _voc(in_tmp_path / "VOC2007", [["dog", "cat"], ["person"]], "trainval")
    cfg = _register(["voc:VOC2007:trainval"], num_classes=20)
    name = cfg.DATASETS.TRAIN[0]
    assert name == f"voc:{in_tmp_path}/VOC2007:trainval"
    metadata = MetadataCatalog.get(name)
    # Pascal VOC's 20 classes, in Detectron2's order, and the 11-point AP of VOC2007.
    assert metadata.thing_classes == list(VOC_CLASSES) and metadata.year == 2007
    dicts = DatasetCatalog.get(name)
    assert [[a["category_id"] for a in d["annotations"]] for d in dicts] == [[11, 7], [14]]
    evaluator = SSDTrainer.build_evaluator(cfg, name)
    assert isinstance(evaluator, PascalVOCDetectionEvaluator)
    # It reads the folder's XML: the ground truth as detections scores 100.
    evaluator.reset()
    for d in dicts:
        instances = Instances((d["height"], d["width"]))
        instances.pred_boxes = Boxes(torch.tensor([a["bbox"] for a in d["annotations"]]))
        instances.scores = torch.ones(len(d["annotations"]))
        instances.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]])
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": instances}])
    assert evaluator.evaluate()["bbox"]["AP50"] == pytest.approx(100.0 * 3 / 20)


def test_voc_folder_of_own_classes_agrees_across_splits(in_tmp_path):
    root = in_tmp_path / "fruit"
    _voc(root, [["pear", "apple"], ["pear"], ["pear"]], "train")
    # The test split has pears only: its classes still come from the whole folder.
    (root / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n")
    cfg = _register(["voc:fruit:train"], ["voc:fruit:test"], num_classes=2)
    train, test = (MetadataCatalog.get(n) for n in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST))
    assert train.thing_classes == test.thing_classes == ["apple", "pear"]
    assert train.year == 2012  # all-point AP for a folder that is not VOC2007
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    assert [[a["category_id"] for a in d["annotations"]] for d in dicts] == [[1, 0], [1], [1]]

    # Names given in the data set name, in their order.
    cfg = _register(["voc:fruit:train:pear,apple"], num_classes=2)
    assert MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_classes == ["pear", "apple"]
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    assert [[a["category_id"] for a in d["annotations"]] for d in dicts] == [[0, 1], [0], [0]]


@pytest.mark.parametrize(
    "name, why",
    [
        ("coco:mine/annotations.json", "a COCO data set needs a json file and an image folder"),
        ("coco:a:b:c", "a COCO data set needs"),  # no .json name: ambiguous
        ("voc:VOC2007", "a VOC data set needs a root folder and a split"),
        ("voc:VOC2007:trainval:a:b", "a VOC data set needs"),
        ("voc:VOC2007:trainval:a,,b", "its class names must be distinct and not empty"),
        ("voc:VOC2007:trainval:a,a", "its class names must be distinct"),
        ("yolo:data.yaml", "'yolo' is not a data set kind"),
    ],
)
def test_malformed_names_say_the_accepted_forms(in_tmp_path, name, why):
    with pytest.raises(ValueError, match=f"DATASETS.TRAIN names data set '{name}': {why}") as e:
        _register([name])
    assert "Accepted forms: 'coco:JSON:IMAGES'" in str(e.value)
    assert "'voc:ROOT:SPLIT:NAME,NAME,...'" in str(e.value)


def test_missing_files_are_named_with_the_key(coco_files):
    missing = f"{coco_files}/mine/val.json"
    with pytest.raises(FileNotFoundError, match=f"DATASETS.TEST names .*{missing} does not exist"):
        _register([COCO_NAME], ["coco:mine/val.json:mine/images"])
    with pytest.raises(FileNotFoundError, match=f"{coco_files}/photos does not exist"):
        _register(["coco:mine/annotations.json:photos"])
    _voc(coco_files / "VOC2007", [["dog"], ["cat"]], "trainval")
    split_file = f"{coco_files}/VOC2007/ImageSets/Main/test.txt"
    with pytest.raises(FileNotFoundError, match=f"DATASETS.TRAIN names .*{split_file} does not"):
        _register(["voc:VOC2007:test"], num_classes=20)
    os.rename("VOC2007/JPEGImages", "VOC2007/images")
    with pytest.raises(FileNotFoundError, match=f"{coco_files}/VOC2007/JPEGImages does not"):
        _register(["voc:VOC2007:trainval"], num_classes=20)


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "is not a COCO detection json: its top level is not an object of lists"),
        ('{"images": []}', "is not a COCO detection json: it has no 'categories'"),
        (
            '{"images": [], "categories": [{"id": 1}]}',
            "is not a COCO detection json: a category lacks an 'id' or a 'name'",
        ),
        (
            '{"images": [], "categories": []}',
            "is not a COCO detection json: its 'categories' list is empty",
        ),
        ("{not json", "is not a json file"),
    ],
)
def test_json_that_is_not_coco(in_tmp_path, content, message):
    (in_tmp_path / "images").mkdir()
    (in_tmp_path / "labels.json").write_text(content)
    with pytest.raises(DatasetError, match=f"{in_tmp_path}/labels.json {message}"):
        _register(["coco:labels.json:images"])


def test_voc_test_set_needs_what_the_voc_evaluator_reads(in_tmp_path):
    _voc(in_tmp_path / "VOC2007", [["dog"], ["cat"]], "trainval", evaluation_fields=False)
    name = "voc:VOC2007:trainval"
    _register([name], num_classes=20)  # training reads only names and boxes
    with pytest.raises(
        DatasetError,
        match=r"DATASETS.TEST: object 0 of .*/VOC2007/Annotations/000000.xml has no whole-number "
        "pose, truncated, difficult, which Detectron2's VOC evaluator reads",
    ):
        _register([], [name], num_classes=20)
    xml_file = in_tmp_path / "VOC2007" / "Annotations" / "000001.xml"
    fields = "<pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
    for path in (in_tmp_path / "VOC2007" / "Annotations").iterdir():
        path.write_text(path.read_text().replace("<bndbox>", fields + "<bndbox>"))
    xml_file.write_text(xml_file.read_text().replace("<xmax>30</xmax>", "<xmax>30.5</xmax>"))
    with pytest.raises(DatasetError, match=r"object 0 of .*/000001.xml has no whole-number xmax"):
        _register([], [name], num_classes=20)


def test_class_count_must_be_num_classes(coco_files):
    with pytest.raises(
        DatasetError,
        match=r"DATASETS.TRAIN names data set .* which has 5 classes \(circle, square, triangle, "
        r"star, ellipse\), but MODEL.SSD.NUM_CLASSES is 20. Set MODEL.SSD.NUM_CLASSES 5",
    ):
        _register([COCO_NAME], num_classes=20)


def test_train_and_test_classes_must_agree(in_tmp_path):
    _voc(in_tmp_path / "a", [["fox"], ["owl"]], "train")
    _voc(in_tmp_path / "b", [["elk"], ["yak"]], "test")
    with pytest.raises(DatasetError, match=r"DATASETS.TEST names .* classes \['elk', 'yak'\]"):
        _register(["voc:a:train"], ["voc:b:test"], num_classes=2)
    # The same names given to both: they agree.
    cfg = _register(["voc:a:train:fox,owl,elk,yak"], ["voc:b:test:fox,owl,elk,yak"], 4)
    train, test = (MetadataCatalog.get(n) for n in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST))
    assert train.thing_classes == test.thing_classes == ["fox", "owl", "elk", "yak"]


def test_tools_register_config_and_dataset_flag_names(coco_files, capsys):
    config = f"{CONFIG_DIR}/ssd160_shapes_demo.yaml"
    output = coco_files / "samples.png"
    args = ["--config-file", config, "--output", str(output), "--samples", "1"]
    assert visualize_data.main([*args, "--opts", "DATASETS.TRAIN", f"('{COCO_NAME}',)"]) == 0
    assert output.exists()
    # The demo names classes from DATASETS.TEST[0] before any data set is loaded.
    _, cfg = common.parse_config(
        common.argument_parser("demo", ""),
        ["--config-file", config, "--opts", "DATASETS.TEST", f"('{COCO_NAME}',)"],
    )
    assert demo.DemoRunner(cfg).metadata.thing_classes == list(SHAPE_CLASSES)
    # --dataset takes such a name too.
    name, dicts = common.dataset_dicts("coco:mine/annotations.json:mine/images", (), "X")
    assert len(dicts) == 4 and name in DatasetCatalog.list()
    # Bad input is a command-line error with the message.
    with pytest.raises(SystemExit) as e:
        visualize_data.main([*args, "--opts", "DATASETS.TRAIN", "('coco:no.json:mine/images',)"])
    assert e.value.code == 2
    assert f"DATASETS.TRAIN names data set 'coco:{coco_files}/no.json" in capsys.readouterr().err


def _coco_results(log: str) -> dict:
    """The COCO evaluation's 'copypaste:' numbers, as written, by name."""
    names, values = re.findall(r"copypaste: (AP,AP50.*)\n.*copypaste: ([0-9a-z.,]+)\n", log)[-1]
    return dict(zip(names.split(","), values.split(",")))


def test_train_net_trains_and_evaluates_on_coco_files(coco_files):
    out = coco_files / "out"
    names = f"('{COCO_NAME}',)"
    opts = ["DATASETS.TRAIN", names, "DATASETS.TEST", names, "OUTPUT_DIR", str(out)]
    opts += ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0"]
    # The published start of the class logits: a model of two iterations detects something.
    opts += ["MODEL.SSD.PRIOR_PROB", "0.0"]
    log = _train_net(coco_files, opts)
    results = _coco_results(log)
    assert list(results) == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert 0 <= float(results["AP50"]) <= 100  # COCO's metrics of the trained model
    # The config the run wrote reads the same files from another directory.
    config = (out / "config.yaml").read_text()
    assert f"coco:{coco_files}/mine/annotations.json:{coco_files}/mine/images" in config
    other = coco_files / "elsewhere"
    other.mkdir()
    weights = ["MODEL.WEIGHTS", str(out / "model_final.pth")]
    log = _train_net(other, weights, ["--eval-only"], config_file=str(out / "config.yaml"))
    assert _coco_results(log) == results

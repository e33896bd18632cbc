"""
Bad annotations and images, in Detectron2's dataset-dict form, COCO json and Pascal VOC xml:
what fails at load (naming the file, the annotation and the fix) and what is repaired or
skipped and counted (the README's "Bad data" table).
"""

import json
import logging
import os
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.datasets import register_coco_instances, register_pascal_voc
from detectron2.structures import BoxMode

from ssd_d2.data import (
    DatasetError,
    SSDDatasetMapper,
    UnreadableImageError,
    build_ssd_train_loader,
    load_dataset_dicts,
    read_image,
)
from ssd_d2.data.checks import check_dataset_dicts
from ssd_d2.engine import SSDTrainer

from ..conftest import load_config
from .voc_files import write_voc

W, H = 64, 48
CLASSES = ["a", "b", "c"]


def _save(path, array, **kwargs):
    Image.fromarray(array).save(path, **kwargs)
    return str(path)


def _image(tmp_path, name="image.jpg", size=(H, W)):
    rng = np.random.default_rng(0)
    return _save(tmp_path / name, rng.integers(0, 256, size + (3,), dtype=np.uint8))


def _truncated(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    return path


def _dict(file_name, annotations, width=W, height=H):
    return {"file_name": file_name, "image_id": 1, "width": width, "height": height,
            "annotations": annotations}  # fmt: skip


def _box(bbox, category_id=0, mode=BoxMode.XYXY_ABS, **extra):
    return {"bbox": bbox, "bbox_mode": mode, "category_id": category_id, **extra}


@pytest.fixture
def registered():
    """Register data sets under fresh names; remove them afterwards."""
    names = []

    def register(kind, *args, **kwargs):
        name = f"bad_data_{uuid.uuid4().hex[:8]}"
        names.append(name)
        if kind == "dicts":
            (dicts,) = args
            DatasetCatalog.register(name, lambda: dicts)
            MetadataCatalog.get(name).set(thing_classes=CLASSES, evaluator_type="coco")
        elif kind == "coco":
            register_coco_instances(name, {}, *args)
        elif kind == "voc":
            register_pascal_voc(name, *args, year=2007, class_names=CLASSES)
        return name

    yield register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# ---------------------------------------------------------------------------------------
# Boxes: repaired or dropped, counted.


def test_degenerate_and_outside_boxes_are_repaired_or_dropped_and_counted(tmp_path):
    image = _image(tmp_path)
    annotations = [
        _box([10, 10, 30, 30]),  # fine
        _box([10, 10, 10, 30]),  # zero width
        _box([10, 10, -5, -5], mode=BoxMode.XYWH_ABS),  # negative size
        _box([-10, 20, 30, 60], category_id=2),  # partly outside: clipped
        _box([70, 10, 90, 30]),  # wholly outside
        _box([0, 0, 0, 0], iscrowd=1),  # crowd: left alone
    ]
    dicts = [
        _dict(image, annotations),
        _dict(image, []),
        _dict(image, [_box([100, 100, 120, 120])]),
    ]
    original = json.dumps(dicts)
    checked, report = check_dataset_dicts(dicts, num_classes=3, dataset_name="")
    assert json.dumps(dicts) == original  # the input is not modified
    assert len(checked) == 3
    boxes = [(a["bbox"], a["bbox_mode"], a["category_id"]) for a in checked[0]["annotations"]]
    assert boxes == [
        ([10, 10, 30, 30], BoxMode.XYXY_ABS, 0),
        ([0.0, 20.0, 30.0, 48.0], BoxMode.XYXY_ABS, 2),
        ([0, 0, 0, 0], BoxMode.XYXY_ABS, 0),
    ]
    assert (report.num_boxes, report.clipped_boxes) == (6, 1)
    assert (report.degenerate_boxes, report.outside_boxes) == (2, 2)
    assert (report.images_without_annotations, report.images_left_without_boxes) == (1, 1)
    summary = report.summary()
    assert "boxes dropped, zero or negative width or height: 2" in summary
    assert "annotation 1 of image " + image in summary


# ---------------------------------------------------------------------------------------
# Annotations that stop training at load, naming the file, the annotation and the fix.


@pytest.mark.parametrize(
    "annotation, message",
    [
        (_box([10, float("nan"), 30, 30]), r"bbox \[10, nan, 30, 30\] with a NaN or infinite"),
        (_box([10, 10, float("inf"), 30]), r"NaN or infinite coordinate.*fix the annotation"),
        (_box([10, 10, 30, 30], category_id=3), r"category_id 3.*MODEL.SSD.NUM_CLASSES = 3"),
        (_box([10, 10, 30, 30], category_id=-1), r"category_id -1, but the model knows"),
        (_box([10, 10, 30], category_id=0), r"SSD needs 4 numbers"),
    ],
)
def test_corrupt_annotations_fail_at_load(tmp_path, registered, annotation, message):
    image = _image(tmp_path)
    name = registered("dicts", [_dict(image, [_box([1, 1, 5, 5]), dict(annotation, id=77)])])
    with pytest.raises(DatasetError, match=message) as error:
        check_dataset_dicts(load_dataset_dicts(name), num_classes=3, dataset_name=name)
    assert f"annotation 1 (id 77) of image {image}" in str(error.value)


def _coco_json(tmp_path, annotations, images=None):
    images = images or [{"id": 1, "file_name": "image.jpg", "width": W, "height": H}]
    path = tmp_path / "annotations.json"
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    for i, annotation in enumerate(annotations):
        annotation.setdefault("id", 100 + i)
        annotation.setdefault("image_id", 1)
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("area", 1.0)
    # json.dump writes NaN and Infinity as JSON's readers (and Detectron2's) accept them.
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))  # fmt: skip
    return str(path)


def test_coco_json(tmp_path, registered):
    _image(tmp_path)
    good = {"bbox": [10, 10, 20, 20], "category_id": 1}
    # An unknown category id: Detectron2's loader fails without naming the file.
    json_file = _coco_json(tmp_path, [good, {"bbox": [1, 1, 5, 5], "category_id": 9}])
    name = registered("coco", json_file, str(tmp_path))
    with pytest.raises(DatasetError, match=r"annotations.json: annotation id 101 \(image "
                       r"image.jpg\) has category_id 9.*Add the category"):  # fmt: skip
        load_dataset_dicts(name)
    # A NaN coordinate.
    json_file = _coco_json(tmp_path, [good, {"bbox": [1, float("nan"), 5, 5], "category_id": 2}])
    name = registered("coco", json_file, str(tmp_path))
    with pytest.raises(DatasetError, match=r"annotation 1 \(id 101\) of image .*image.jpg in "
                       r".*annotations.json has bbox \[1, nan"):  # fmt: skip
        check_dataset_dicts(load_dataset_dicts(name), num_classes=3, dataset_name=name)
    # Negative width and a box outside the image: dropped and counted.
    boxes = [good, {"bbox": [30, 5, -4, 10], "category_id": 2}, {"bbox": [200, 5, 4, 10],
             "category_id": 3}]  # fmt: skip
    name = registered("coco", _coco_json(tmp_path, boxes), str(tmp_path))
    checked, report = check_dataset_dicts(
        load_dataset_dicts(name), num_classes=3, dataset_name=name
    )
    assert [a["bbox"] for a in checked[0]["annotations"]] == [[10, 10, 20, 20]]
    assert (report.degenerate_boxes, report.outside_boxes) == (1, 1)


def _voc(root, objects_per_image):
    """A VOC folder of random 64x48 images; each object is (name, (x0, y0, x1, y1))."""
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    objects = [[(name, box, None) for name, box in objs] for objs in objects_per_image]
    return write_voc(root / "VOC", objects, "train", image)


def test_pascal_voc_xml(tmp_path, registered):
    good = ("a", (10, 10, 20, 20))
    root = _voc(tmp_path, [[good], [good, ("dog", (5, 5, 9, 9))]])
    name = registered("voc", root, "train")
    with pytest.raises(DatasetError, match=r"000001.xml: object 1 is named 'dog', which is not "
                       r"one of the data set's classes \['a', 'b', 'c'\]"):  # fmt: skip
        load_dataset_dicts(name)

    root = _voc(tmp_path / "nan", [[good], [good, ("b", (5, "nan", 9, 9))]])
    name = registered("voc", root, "train")
    with pytest.raises(DatasetError, match=r"000001.jpg in .*Annotations/000001.xml has bbox"):
        check_dataset_dicts(load_dataset_dicts(name), num_classes=3, dataset_name=name)

    root = _voc(tmp_path / "out", [[good, ("c", (60, 40, 90, 90)), ("b", (80, 5, 99, 9))], []])
    name = registered("voc", root, "train")
    checked, report = check_dataset_dicts(
        load_dataset_dicts(name), num_classes=3, dataset_name=name
    )
    # VOC's 1-based pixel indices: xmin 60 is x 59.
    assert [a["bbox"] for a in checked[0]["annotations"]] == [[9.0, 9.0, 20.0, 20.0],
                                                             [59.0, 39.0, 64.0, 48.0]]  # fmt: skip
    assert (report.clipped_boxes, report.outside_boxes) == (1, 1)
    assert report.images_without_annotations == 1


# ---------------------------------------------------------------------------------------
# Image files.


def test_missing_images_fail_at_load_naming_them(tmp_path):
    image = _image(tmp_path)
    dicts = [_dict(image, []), _dict(str(tmp_path / "gone.jpg"), [])]
    with pytest.raises(DatasetError, match=r"1 of the 2 images of data set 'x' do not exist, "
                       r"e.g. .*gone.jpg. If none exist"):  # fmt: skip
        check_dataset_dicts(dicts, num_classes=3, dataset_name="x")


def test_unreadable_images_are_dropped_at_load_and_counted(tmp_path):
    image = _image(tmp_path)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not a JPEG")
    checked, report = check_dataset_dicts(
        [_dict(image, []), _dict(str(junk), [])], num_classes=3, dataset_name="x"
    )
    assert [d["file_name"] for d in checked] == [image]
    assert [f for f, _ in report.unreadable_images] == [str(junk)]
    assert "images dropped, unreadable: 1" in report.summary()


def test_size_mismatch_and_exif_rotation_fail_at_load_with_the_fix(tmp_path):
    image = _image(tmp_path)
    with pytest.raises(DatasetError, match=r"image.jpg is 64x48 but .* gives width 60 and height"):
        check_dataset_dicts([_dict(image, [], width=60)], num_classes=3)
    rotated = _exif_rotated(tmp_path)  # stored 64x48, shown 48x64
    checked, _ = check_dataset_dicts([_dict(rotated, [], width=H, height=W)], num_classes=3)
    assert len(checked) == 1
    with pytest.raises(DatasetError, match=r"EXIF orientation 6 \(shown 48x64.*the size of the "
                       r"unrotated pixels. Write the displayed size"):  # fmt: skip
        check_dataset_dicts([_dict(rotated, [])], num_classes=3)


def _exif_rotated(tmp_path):
    pixels = np.zeros((H, W, 3), dtype=np.uint8)
    pixels[:, : W // 2] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)
    return str(path)


def test_image_formats_are_read_as_8_bit_rgb(tmp_path):
    ramp = np.linspace(0, 65535, W, dtype=np.uint16)[None].repeat(H, axis=0)
    sixteen_bit = read_image(_save(tmp_path / "16bit.png", ramp), "RGB")
    assert sixteen_bit.dtype == np.uint8 and sixteen_bit.shape == (H, W, 3)
    # Scaled, not clipped at 255: the ramp still runs from black to white.
    assert sixteen_bit[0, 0].tolist() == [0, 0, 0] and sixteen_bit[0, -1].tolist() == [255] * 3
    assert 120 <= sixteen_bit[0, W // 2, 0] <= 135

    gray = read_image(_save(tmp_path / "gray.png", np.full((H, W), 77, np.uint8)), "RGB")
    assert gray.shape == (H, W, 3) and (gray == 77).all()
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    rgba = read_image(_save(tmp_path / "rgba.png", rgba), "RGB")
    assert rgba.shape == (H, W, 3) and (rgba == [200, 0, 0]).all()
    bgr = read_image(
        _save(tmp_path / "rgba2.png", np.dstack([rgba, np.zeros((H, W), np.uint8)])), "BGR"
    )
    assert (bgr == [0, 0, 200]).all()

    # EXIF orientation applied: shown 48 wide and 64 high, the white half on top.
    rotated = read_image(_exif_rotated(tmp_path), "RGB")
    assert rotated.shape == (W, H, 3)
    assert rotated[: W // 2 - 4].min() > 200 and rotated[W // 2 + 4 :].max() < 50


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_images_raise_naming_the_file(tmp_path, suffix):
    path = _truncated(_image(tmp_path, "broken" + suffix))
    with pytest.raises(UnreadableImageError, match=r"Cannot read image .*broken" + suffix):
        read_image(path, "RGB")
    # At test time too: the image cannot be skipped without changing the metrics.
    mapper = SSDDatasetMapper(_mapper_cfg(), is_train=False)
    with pytest.raises(UnreadableImageError, match="broken" + suffix):
        mapper(_dict(path, []))


def _mapper_cfg(*opts):
    cfg = load_config("ssd160_shapes_demo", "MODEL.SSD.NUM_CLASSES", 3, *opts)
    return cfg


class _RecordShape(T.Augmentation):
    def __init__(self):
        self.shapes = []

    def get_transform(self, image):
        self.shapes.append(image.shape)
        return T.NoOpTransform()


def test_tiny_and_huge_images(tmp_path):
    recorder = _RecordShape()
    augmentations = [recorder] + SSDDatasetMapper(_mapper_cfg(), is_train=True).augmentations.augs
    mapper = SSDDatasetMapper(
        True, augmentations=augmentations, image_format="RGB", max_input_size=640
    )
    np.random.seed(0)
    tiny = _save(tmp_path / "tiny.png", np.full((1, 1, 3), 200, np.uint8))
    for _ in range(20):
        out = mapper(_dict(tiny, [_box([0, 0, 1, 1])], width=1, height=1))
        assert out["image"].shape == (3, 160, 160)
        boxes = out["instances"].gt_boxes.tensor
        assert torch.isfinite(boxes).all() and len(boxes) <= 1

    # A huge photo is scaled down to 640 before the augmentations (zoom out would otherwise
    # build a canvas of up to 32000 x 32000 pixels), and its boxes with it.
    huge = np.zeros((8000, 8000, 3), np.uint8)
    huge[2000:6000, 4000:8000] = 255
    path = _save(tmp_path / "huge.jpg", huge, quality=50)
    no_random = SSDDatasetMapper(
        True, augmentations=[recorder, T.Resize((160, 160))], image_format="RGB",
        max_input_size=640,
    )  # fmt: skip
    out = no_random(_dict(path, [_box([4000, 2000, 8000, 6000])], width=8000, height=8000))
    assert recorder.shapes[-1] == (640, 640, 3)
    assert out["instances"].gt_boxes.tensor.tolist() == [[80.0, 40.0, 160.0, 120.0]]
    assert max(max(s[:2]) for s in recorder.shapes) <= 640


# ---------------------------------------------------------------------------------------
# The training loader and the trainer: the report and the skipped images in the logs.


def test_training_counts_skipped_images_in_the_log_and_metrics(tmp_path, registered, caplog):
    good = [_image(tmp_path, f"good{i}.jpg") for i in range(3)]
    truncated = _truncated(_image(tmp_path, "truncated.jpg"))
    gray = _save(tmp_path / "gray.png", np.full((H, W), 99, np.uint8))
    dicts = [_dict(f, [_box([5, 5, 30, 30], category_id=1)]) for f in good + [truncated, gray]]
    dicts.append(_dict(good[0], [_box([5, 5, 5, 30])]))  # left without boxes
    name = registered("dicts", dicts)
    cfg = _mapper_cfg(
        "DATASETS.TRAIN", (name,), "DATASETS.TEST", (), "SOLVER.IMS_PER_BATCH", 4,
        "SOLVER.MAX_ITER", 3, "DATALOADER.NUM_WORKERS", 0, "OUTPUT_DIR", str(tmp_path / "out"),
        "SOLVER.WARMUP_ITERS", 1, "SOLVER.CHECKPOINT_PERIOD", 100,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="ssd_d2"):
        trainer = SSDTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    log = caplog.text
    assert f"Data set {name!r}: 6 images, 6 boxes checked." in log
    assert "boxes dropped, zero or negative width or height: 1" in log
    assert f"Skipped unreadable training image {truncated}" in log
    metrics = [json.loads(line) for line in open(tmp_path / "out" / "metrics.json")]
    skipped = metrics[-1]["data/skipped_images"]
    # 12 samples from 6 images: the truncated one came up at least once.
    assert skipped >= 1 and skipped == trainer.train_loader.num_skipped

    # FILTER_EMPTY_ANNOTATIONS drops the image left without boxes.
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True
    loader = build_ssd_train_loader(cfg)
    assert len(loader.stream.dataset) == 5


def test_test_loader_fails_early_on_missing_images(tmp_path, registered):
    name = registered("dicts", [_dict(_image(tmp_path), []), _dict(str(tmp_path / "no.jpg"), [])])
    with pytest.raises(
        DatasetError, match=r"1 of the 2 images of data set .* do not exist, e.g. .*/no.jpg"
    ):
        SSDTrainer.build_test_loader(_mapper_cfg(), name)
    assert os.path.exists(tmp_path / "image.jpg")

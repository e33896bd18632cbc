import copy
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances

from ssd_d2.config import add_ssd_config
from ssd_d2.data.dataset_mapper import SSDDatasetMapper
from ssd_d2.data.transforms import (
    FixedSizeResize,
    MinIoURandomCrop,
    RandomChannelSwap,
    RandomExpand,
    RandomPhotometricDistortion,
)

IMAGE_SIZE = 64
HEIGHT, WIDTH = 90, 120


def _cfg(*opts):
    cfg = get_cfg()
    add_ssd_config(cfg)
    cfg.merge_from_list(
        ["INPUT.FORMAT", "RGB", "MODEL.PIXEL_MEAN", [123.0, 117.0, 104.0]]
        + ["MODEL.SSD.IMAGE_SIZE", IMAGE_SIZE, *opts]
    )
    return cfg


def _no_random_augmentations():
    return [
        "INPUT.SSD.PHOTOMETRIC.ENABLED", False,
        "INPUT.SSD.EXPAND.ENABLED", False,
        "INPUT.SSD.MIN_IOU_CROP.ENABLED", False,
        "INPUT.SSD.FLIP_PROB", 0.0,
    ]  # fmt: skip


@pytest.fixture
def jpeg_file(tmp_path):
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[10:40, 20:60] = (255, 0, 0)
    path = os.path.join(tmp_path, "image.jpg")
    Image.fromarray(image).save(path, quality=95)
    return path


def _dataset_dict(file_name, annotations):
    return {
        "file_name": file_name,
        "height": HEIGHT,
        "width": WIDTH,
        "image_id": 7,
        "annotations": annotations,
    }


ANNOTATIONS = [
    {"bbox": [20, 10, 40, 30], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 3},
    {"bbox": [0, 0, 120, 90], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 5, "iscrowd": 1},
    {"bbox": [60, 45, 120, 90], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 0},
]


def test_train_output_by_hand(jpeg_file):
    # Only the resize: the boxes are scaled by exactly 64/120 and 64/90; the crowd box is skipped.
    mapper = SSDDatasetMapper(_cfg(*_no_random_augmentations()), is_train=True)
    dataset_dict = _dataset_dict(jpeg_file, ANNOTATIONS)
    original = copy.deepcopy(dataset_dict)
    out = mapper(dataset_dict)
    assert dataset_dict == original

    image = out["image"]
    assert image.dtype == torch.uint8 and image.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert image.is_contiguous()
    assert "annotations" not in out
    assert (out["height"], out["width"], out["image_id"]) == (HEIGHT, WIDTH, 7)
    instances = out["instances"]
    assert isinstance(instances, Instances) and instances.image_size == (IMAGE_SIZE, IMAGE_SIZE)
    assert isinstance(instances.gt_boxes, Boxes)
    sx, sy = IMAGE_SIZE / WIDTH, IMAGE_SIZE / HEIGHT
    expected = [[20 * sx, 10 * sy, 60 * sx, 40 * sy], [60 * sx, 45 * sy, 120 * sx, 90 * sy]]
    torch.testing.assert_close(instances.gt_boxes.tensor, torch.tensor(expected))
    assert instances.gt_classes.dtype == torch.int64
    assert instances.gt_classes.tolist() == [3, 0]
    # The red box (RGB) is where its box says.
    x0, y0, x1, y1 = instances.gt_boxes.tensor[0].round().int().tolist()
    inside = image[:, y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].float().mean(dim=(1, 2))
    assert inside[0] > 240 and inside[1] < 15 and inside[2] < 15


def test_full_chain(jpeg_file):
    np.random.seed(0)
    mapper = SSDDatasetMapper(_cfg(), is_train=True)
    num_boxes = 0
    for _ in range(100):
        out = mapper(_dataset_dict(jpeg_file, ANNOTATIONS))
        assert out["image"].shape == (3, IMAGE_SIZE, IMAGE_SIZE)
        instances = out["instances"]
        assert instances.image_size == (IMAGE_SIZE, IMAGE_SIZE)
        boxes = instances.gt_boxes.tensor
        assert len(boxes) == len(instances.gt_classes) <= 2
        assert (boxes >= 0).all() and (boxes <= IMAGE_SIZE).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert set(instances.gt_classes.tolist()) <= {3, 0}
        num_boxes += len(boxes)
    assert num_boxes > 100


@pytest.mark.parametrize("annotations", [[], None])
def test_image_without_boxes_is_kept(jpeg_file, annotations):
    np.random.seed(0)
    mapper = SSDDatasetMapper(_cfg(), is_train=True)
    dataset_dict = _dataset_dict(jpeg_file, annotations)
    if annotations is None:
        del dataset_dict["annotations"]
    for _ in range(10):
        out = mapper(dataset_dict)
        assert out["image"].shape == (3, IMAGE_SIZE, IMAGE_SIZE)
        assert len(out["instances"]) == 0
        assert out["instances"].image_size == (IMAGE_SIZE, IMAGE_SIZE)
        assert out["instances"].gt_boxes.tensor.shape == (0, 4)
        assert out["instances"].gt_classes.dtype == torch.int64


def test_test_mode(jpeg_file):
    mapper = SSDDatasetMapper(_cfg(), is_train=False)
    dataset_dict = _dataset_dict(jpeg_file, ANNOTATIONS)
    original = copy.deepcopy(dataset_dict)
    out = mapper(dataset_dict)
    assert dataset_dict == original
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, HEIGHT, WIDTH)
    assert "instances" not in out and "annotations" not in out
    assert (out["height"], out["width"]) == (HEIGHT, WIDTH)


def test_from_config_switches():
    def augmentation_types(*opts, is_train=True):
        mapper = SSDDatasetMapper(_cfg(*opts), is_train=is_train)
        return [type(a) for a in mapper.augmentations.augs]

    all_types = [
        RandomPhotometricDistortion,
        RandomChannelSwap,
        RandomExpand,
        MinIoURandomCrop,
        T.RandomFlip,
    ]
    assert augmentation_types() == all_types + [FixedSizeResize]
    # Disabling the photometric distortion disables its channel swap too.
    switches = {"PHOTOMETRIC": all_types[2:], "EXPAND": all_types[:2] + all_types[3:]}
    switches["MIN_IOU_CROP"] = all_types[:3] + all_types[4:]
    for key, types in switches.items():
        assert augmentation_types(f"INPUT.SSD.{key}.ENABLED", False) == types + [FixedSizeResize]
    assert augmentation_types("INPUT.SSD.PHOTOMETRIC.CHANNEL_SWAP_PROB", 0.0) == [
        t for t in all_types if t is not RandomChannelSwap
    ] + [FixedSizeResize]
    assert augmentation_types("INPUT.SSD.FLIP_PROB", 0.0) == all_types[:4] + [FixedSizeResize]
    assert augmentation_types(*_no_random_augmentations()) == [FixedSizeResize]
    assert augmentation_types(is_train=False) == []

    mapper = SSDDatasetMapper(_cfg(), is_train=True)
    photometric, swap, expand, crop, flip, resize = mapper.augmentations.augs
    assert photometric.image_format == "RGB" and photometric.brightness_delta == 32
    assert swap.prob == 0.5
    assert expand.fill == (123.0, 117.0, 104.0) and expand.max_ratio == 4.0
    # lufficc/SSD's crop modes: no 0.5.
    assert crop.min_ious == (0.1, 0.3, 0.7, 0.9) and crop.max_trials == 50
    assert flip.prob == 0.5 and resize.size == (IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize(
    "image_format, pixel_mean", [("RGB", [123.0, 117.0, 104.0]), ("BGR", [104.0, 117.0, 123.0])]
)
def test_expand_fill_follows_the_image_format(tmp_path, image_format, pixel_mean):
    # PIXEL_MEAN is given in INPUT.FORMAT order: both configs must paint the same colour,
    # RGB (123, 117, 104), around a black image.
    path = os.path.join(tmp_path, "black.jpg")
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)).save(path)
    opts = _no_random_augmentations() + ["INPUT.FORMAT", image_format]
    opts += ["MODEL.PIXEL_MEAN", pixel_mean, "INPUT.SSD.EXPAND.ENABLED", True]
    opts += ["INPUT.SSD.EXPAND.PROB", 1.0, "MODEL.SSD.IMAGE_SIZE", 300]
    mapper = SSDDatasetMapper(_cfg(*opts), is_train=True)
    np.random.seed(0)
    for _ in range(5):
        image = mapper(_dataset_dict(path, []))["image"]
        pixels = image.reshape(3, -1).T.numpy()
        if image_format == "BGR":
            pixels = pixels[:, ::-1]
        is_mean = (pixels == [123, 117, 104]).all(axis=1)
        is_black = (pixels <= 3).all(axis=1)
        assert is_mean.sum() + is_black.sum() > 0.95 * len(pixels)
        assert is_mean.any()

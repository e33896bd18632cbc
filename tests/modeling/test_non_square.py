"""Non-square network inputs: MODEL.SSD.IMAGE_HEIGHT_WIDTH, resolved with MODEL.SSD.IMAGE_SIZE
by one function, and an SSD at 160 x 288 that trains, infers and scales boxes per axis."""

import math

import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from ssd_d2 import SSDTrainer
from ssd_d2.config import resolve_image_size
from ssd_d2.data.datasets import register_shapes_dataset
from ssd_d2.modeling import VGG16SSD, resize_to_network_size

from ..conftest import load_config
from .test_modeling import check_train_and_eval_forward

NON_SQUARE = "ssd160x288_shapes_demo"


def test_the_size_keys_resolve_to_height_and_width():
    assert resolve_image_size(load_config("ssd300_voc")) == (300, 300)
    assert resolve_image_size(load_config(NON_SQUARE)) == (160, 288)
    square = ["MODEL.SSD.IMAGE_HEIGHT_WIDTH", "[300, 300]"]
    assert resolve_image_size(load_config("ssd300_voc", *square)) == (300, 300)


@pytest.mark.parametrize(
    "opts, message",
    [
        (
            ["MODEL.SSD.IMAGE_HEIGHT_WIDTH", "[288, 512]"],
            r"MODEL.SSD.IMAGE_SIZE = 300 and MODEL.SSD.IMAGE_HEIGHT_WIDTH = \[288, 512\] "
            r"disagree: .*IMAGE_SIZE 0",
        ),
        (
            ["MODEL.SSD.IMAGE_SIZE", "0"],
            "IMAGE_SIZE is 0 and MODEL.SSD.IMAGE_HEIGHT_WIDTH is empty",
        ),
        (
            ["MODEL.SSD.IMAGE_SIZE", "0", "MODEL.SSD.IMAGE_HEIGHT_WIDTH", "[288]"],
            r"IMAGE_HEIGHT_WIDTH = \[288\]: give two positive whole numbers, \[height, width\]",
        ),
    ],
)
def test_size_keys_that_disagree_or_are_malformed_fail_clearly(opts, message):
    cfg = load_config("ssd300_voc", *opts)
    with pytest.raises(ValueError, match=message):
        resolve_image_size(cfg)
    with pytest.raises(ValueError, match=message):
        build_model(cfg)  # the model resolves the size through the same function


def test_the_resize_rule_takes_height_and_width():
    image = torch.rand(3, 40, 60)
    resized, scaled = resize_to_network_size(
        image, (20, 90), Boxes(torch.tensor([[6.0, 4, 30, 40]]))
    )
    assert resized.shape == (3, 20, 90)
    # x scaled by 90 / 60, y by 20 / 40.
    torch.testing.assert_close(scaled.tensor, torch.tensor([[9.0, 2, 45, 20]]))


def test_vgg16_maps_at_288x512_fit_the_documented_steps():
    # docs/ssd.md's SSD300-style 16:9 levels: each map side times its step is the input side.
    backbone = VGG16SSD((288, 512)).eval()
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, 288, 512))
    maps = [tuple(f.shape[-2:]) for f in features.values()]
    assert maps == [(36, 64), (18, 32), (9, 16), (5, 8), (3, 6), (1, 4)]
    steps = [(8, 8), (16, 16), (32, 32), (57.6, 64), (96, 85.333333), (288, 128)]
    for (rows, cols), (step_y, step_x) in zip(maps, steps):
        assert rows * step_y == pytest.approx(288) and cols * step_x == pytest.approx(512, abs=1e-4)


def test_non_square_model_trains_and_infers():
    model = build_model(load_config(NON_SQUARE))
    assert model.image_size == (160, 288)
    # The default boxes over 20x36, 10x18, 5x9, 3x5 and 1x3 maps.
    anchors = model.anchor_generator(
        [torch.zeros(1, 1, h, w) for h, w in ((20, 36), (10, 18), (5, 9), (3, 5), (1, 3))]
    )
    assert [len(a) for a in anchors] == [20 * 36 * 4, 10 * 18 * 6, 5 * 9 * 6, 3 * 5 * 4, 3 * 4]
    # The last level's 1:2 box (120 * sqrt(2) = 169.7 px high) is clamped to the height,
    # its 2:1 box keeps its width.
    sizes = anchors[-1].tensor[:, 2:] - anchors[-1].tensor[:, :2]
    assert sizes[:, 1].max().item() == pytest.approx(160)
    assert sizes[:, 0].max().item() == pytest.approx(120 * 2**0.5)
    check_train_and_eval_forward(model, (100, 70), model.max_detections_per_image, num_classes=3)


def test_boxes_come_back_in_each_images_pixels_per_axis():
    model = build_model(load_config(NON_SQUARE)).eval()
    image = torch.randint(0, 256, (3, 160, 288), dtype=torch.uint8)
    with torch.no_grad():
        at_network_size = model([{"image": image}])[0]["instances"]
        # The same pixels, reported for an original image 3x as high and 2x as wide.
        original = model([{"image": image, "height": 480, "width": 576}])[0]["instances"]
    assert original.image_size == (480, 576) and len(original) == len(at_network_size) > 0
    expected = at_network_size.pred_boxes.tensor * torch.tensor([2.0, 3.0, 2.0, 3.0])
    torch.testing.assert_close(original.pred_boxes.tensor, expected)
    boxes = at_network_size.pred_boxes.tensor
    assert (boxes[:, 0::2] <= 288).all() and (boxes[:, 1::2] <= 160).all()
    assert (boxes[:, 0::2] > 160).any()  # x reaches past the height: clipped to the width


def test_non_square_model_trains_on_the_shapes_set_and_evaluates(tmp_path):
    splits = {"non_square_shapes": {"dirname": "six", "seed": 21, "num_images": 6}}
    register_shapes_dataset(str(tmp_path / "datasets"), splits)
    try:
        # fmt: off
        cfg = load_config(
            NON_SQUARE, "DATASETS.TRAIN", ("non_square_shapes",),
            "DATASETS.TEST", ("non_square_shapes",), "DATALOADER.NUM_WORKERS", 0,
            "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 3, "SOLVER.WARMUP_ITERS", 1,
            "SOLVER.AMP.ENABLED", False, "TEST.PRECISION", "fp32",
            "OUTPUT_DIR", str(tmp_path / "out"),
        )
        # fmt: on
        trainer = SSDTrainer(cfg)
        with EventStorage():
            # The training batches are at the network size, 160 high and 288 wide.
            batch = next(iter(trainer.data_loader))
        assert {tuple(x["image"].shape[-2:]) for x in batch} == {(160, 288)}
        assert {x["instances"].image_size for x in batch} == {(160, 288)}
        trainer.train()
        losses = [v for v, _ in trainer.storage.history("total_loss").values()]
        assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
        results = SSDTrainer.test(cfg, trainer.model)
        assert set(results["bbox"]) >= {"AP", "AP50"}
    finally:
        for name in splits:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)

import glob
import os

import numpy as np
import pytest
import torch
from torch import nn

from detectron2.engine import DefaultPredictor

from ..conftest import CONFIG_DIR, load_config

# Every config that describes a whole model (the Base-*.yaml files are only inherited).
MODEL_CONFIGS = sorted(
    os.path.splitext(os.path.basename(path))[0]
    for path in glob.glob(os.path.join(CONFIG_DIR, "*.yaml"))
    if not os.path.basename(path).startswith("Base-")
)


def test_every_model_config_is_covered():
    assert len(MODEL_CONFIGS) >= 8 and "ssd512_coco" in MODEL_CONFIGS


def _capture_model_inputs(model: nn.Module) -> list:
    """Record the inputs of every forward call of ``model``."""
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(args[0]))
    return calls


@pytest.mark.parametrize("config_name", MODEL_CONFIGS)
def test_default_predictor_runs_every_config(config_name):
    # Random weights: the published configs' ImageNet backbones would be downloaded. Their
    # near-uniform class scores (1 / 81 with COCO's classes) lie below some configs' test
    # thresholds (mmdetection's 0.02, NVIDIA's 0.05): a lower one.
    cfg = load_config(config_name, "MODEL.WEIGHTS", "", "MODEL.SSD.SCORE_THRESH_TEST", 0.005)
    predictor = DefaultPredictor(cfg)
    calls = _capture_model_inputs(predictor.model)
    # A different odd size per config: none is the network's square input.
    rng = np.random.default_rng(MODEL_CONFIGS.index(config_name))
    height, width = (int(v) for v in rng.integers(97, 541, 2))
    bgr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)

    instances = predictor(bgr)["instances"]

    # The model got the original pixels, unresized, in INPUT.FORMAT channel order.
    assert cfg.INPUT.FORMAT in ("RGB", "BGR")
    expected = bgr[:, :, ::-1] if cfg.INPUT.FORMAT == "RGB" else bgr
    (inputs,) = calls
    assert (inputs[0]["height"], inputs[0]["width"]) == (height, width)
    np.testing.assert_array_equal(inputs[0]["image"].permute(1, 2, 0).numpy(), expected)

    assert instances.image_size == (height, width)
    assert set(instances.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
    assert 0 < len(instances) <= cfg.TEST.DETECTIONS_PER_IMAGE
    boxes = instances.pred_boxes.tensor
    assert (boxes >= 0).all()
    assert (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all()
    assert (instances.scores >= cfg.MODEL.SSD.SCORE_THRESH_TEST).all()
    classes = instances.pred_classes
    assert ((classes >= 0) & (classes < cfg.MODEL.SSD.NUM_CLASSES)).all()


def test_default_predictor_takes_bgr_images_of_any_size():
    cfg = load_config("ssd160_shapes_demo")
    predictor = DefaultPredictor(cfg)  # random weights: no MODEL.WEIGHTS
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (240, 333, 3), dtype=np.uint8)
    instances = predictor(bgr)["instances"]
    assert instances.image_size == (240, 333)
    assert len(instances) > 0

    # The predictor only flips BGR to RGB: the model sees the original pixels, any size.
    rgb = torch.as_tensor(np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1)))
    with torch.no_grad():
        expected = predictor.model([{"image": rgb}])[0]["instances"]
    torch.testing.assert_close(instances.pred_boxes.tensor, expected.pred_boxes.tensor)
    torch.testing.assert_close(instances.scores, expected.scores)


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3)


def test_bgr_model_gives_the_detections_of_the_rgb_model():
    # The same network trained on BGR images: the pixel mean, std and the input channels of
    # the first conv in BGR order. DefaultPredictor must then feed it the BGR image unflipped.
    rgb_cfg = load_config("ssd160_shapes_demo")
    bgr_cfg = load_config("ssd160_shapes_demo", "INPUT.FORMAT", "BGR")
    bgr_cfg.MODEL.PIXEL_MEAN = rgb_cfg.MODEL.PIXEL_MEAN[::-1]
    bgr_cfg.MODEL.PIXEL_STD = rgb_cfg.MODEL.PIXEL_STD[::-1]
    rgb_predictor = DefaultPredictor(rgb_cfg)
    bgr_predictor = DefaultPredictor(bgr_cfg)
    bgr_predictor.model.load_state_dict(rgb_predictor.model.state_dict())
    with torch.no_grad():
        conv = _first_conv(bgr_predictor.model)
        conv.weight.copy_(_first_conv(rgb_predictor.model).weight.flip(1))
    calls = _capture_model_inputs(bgr_predictor.model)

    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (211, 307, 3), dtype=np.uint8)
    expected = rgb_predictor(bgr)["instances"]
    instances = bgr_predictor(bgr)["instances"]

    np.testing.assert_array_equal(calls[0][0]["image"].permute(1, 2, 0).numpy(), bgr)
    assert len(expected) > 0
    torch.testing.assert_close(instances.pred_boxes.tensor, expected.pred_boxes.tensor)
    torch.testing.assert_close(instances.scores, expected.scores)
    torch.testing.assert_close(instances.pred_classes, expected.pred_classes)
